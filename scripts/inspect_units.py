from cvaudit.represent.inspect_units import run_units


def main(sm):
    run_units(sm.input.model, sm.input.manifest, sm.input.audit_set, sm.params.options, seed=sm.params.seed,
              device=sm.params.device, threads=sm.threads, out=sm.output.units)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
