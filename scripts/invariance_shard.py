from cvaudit.invariance import run_invariance_shard


def main(sm):
    run_invariance_shard(sm.wildcards.family, sm.input.model, sm.input.manifest, sm.params.options,
                         seed=sm.params.seed, device=sm.params.device, threads=sm.threads,
                         shard=int(sm.wildcards.shard), shard_size=sm.params.shard_size, out=sm.output.part)


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: the merge reports a failed shard
