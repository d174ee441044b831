from cvaudit.explain.tcav import run_tcav


def main(sm):
    run_tcav(sm.input.model, sm.input.manifest, dict(sm.params.concepts), sm.params.options, seed=sm.params.seed,
             device=sm.params.device, threads=sm.threads, out=sm.output.results)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
