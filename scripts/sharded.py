"""Entry script of the rules of every per-image stage (rules/sharded.smk): `<stage>_shard` computes one
shard, `<stage>` merges the shards (or computes the whole stage in one job when shard_size is 0), and
`<stage>_model` computes every method, family or attack of the stage for one model, one after another."""
from cvaudit.core.job import part_of
from cvaudit.core.shards import run_shard, run_stage


def main(sm):
    p = sm.params
    job = {"model": sm.input.model, "data": sm.input.data, "seed": p.seed, "device": p.device, "threads": sm.threads}
    if sm.rule.endswith("_model"):  # a failed item is recorded as its own job would record it; the others still run
        for item, out in zip(p.each, sm.output):
            part_of(sm, p.stage, {"model": sm.wildcards.model, p.item: item}, [out],
                    lambda: run_stage(p.stage, item, {**job, **p.jobs[item]}, out))
        return
    job.update(p.job)
    item = sm.wildcards[p.item]
    if sm.rule.endswith("_shard"):
        run_shard(p.stage, item, job, int(sm.wildcards.shard), p.shard_size, sm.output.out)
    else:
        run_stage(p.stage, item, job, sm.output.out, parts=list(sm.input.parts))  # no parts: compute here


if __name__ == "__main__":
    from cvaudit.core.job import run

    # optional: a failure is reported in the report, not fatal (a failed shard is reported by its merge)
    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake
