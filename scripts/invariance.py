from cvaudit.invariance import run_invariance


def main(sm):
    run_invariance(sm.wildcards.family, sm.input.model, sm.input.manifest, sm.params.options, sm.params.drift,
                   seed=sm.params.seed, device=sm.params.device, threads=sm.threads, out=sm.output.curve,
                   parts=list(sm.input.parts))  # the shards to merge; none: compute here


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
