from cvaudit.robust.calibrate import run_calibration


def main(sm):
    run_calibration(sm.input.model, sm.input.manifest, sm.input.probs, sm.params.options, seed=sm.params.seed,
                    device=sm.params.device, threads=sm.threads, out=sm.output.calibration, groups=list(sm.params.groups))


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
