from cvaudit.explain import run_explain_shard


def main(sm):
    run_explain_shard(sm.wildcards.method, sm.input.model, sm.input.audit_set, sm.params.options, sm.params.trust,
                      seed=sm.params.seed, device=sm.params.device, threads=sm.threads,
                      shard=int(sm.wildcards.shard), shard_size=sm.params.shard_size, out=sm.output.part)


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: the merge reports a failed shard
