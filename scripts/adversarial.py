from cvaudit.adversarial import run_adversarial


def main(sm):
    run_adversarial(sm.wildcards.attack, sm.input.model, sm.input.manifest, sm.params.options, seed=sm.params.seed,
                    device=sm.params.device, threads=sm.threads, out=sm.output.result,
                    parts=list(sm.input.parts))  # the shards to merge; none: compute here


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
