from cvaudit.represent.visualise_ascent import run_ascent


def main(sm):
    run_ascent(sm.input.model, sm.input.units, sm.params.options, seed=sm.params.seed, device=sm.params.device,
               threads=sm.threads, out=sm.output.ascent)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
