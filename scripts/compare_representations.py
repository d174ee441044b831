from cvaudit.represent.represent import compare_representations


def main(sm):
    compare_representations({k: v for k, v in sm.input.items()}, seed=sm.params.seed, out=sm.output.cka)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
