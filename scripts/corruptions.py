from cvaudit.robust.corruptions import run_corruptions


def main(sm):
    reference = [sm.input.reference] if isinstance(sm.input.reference, str) else list(sm.input.reference)
    run_corruptions(sm.input.model, sm.input.manifest, sm.params.options, seed=sm.params.seed, device=sm.params.device,
                    threads=sm.threads, out=sm.output.results, reference=reference[0] if reference else None)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
