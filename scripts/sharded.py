"""Entry script of both rules of every sharded stage (rules/sharded.smk): `<stage>_shard` computes one
shard, `<stage>` merges the shards (or computes the whole stage in one job when shard_size is 0)."""
from cvaudit.core.shards import run_shard, run_stage


def main(sm):
    p = sm.params
    job = {"model": sm.input.model, "data": sm.input.data, **p.job, "seed": p.seed, "device": p.device,
           "threads": sm.threads}
    item = sm.wildcards[p.item]
    if sm.rule.endswith("_shard"):
        run_shard(p.stage, item, job, int(sm.wildcards.shard), p.shard_size, sm.output.out)
    else:
        run_stage(p.stage, item, job, sm.output.out, parts=list(sm.input.parts))  # no parts: compute here


if __name__ == "__main__":
    from cvaudit.core.job import run

    # optional: a failure is reported in the report, not fatal (a failed shard is reported by its merge)
    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake
