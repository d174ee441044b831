from cvaudit.explain.method_agreement import run_method_agreement


def main(sm):
    run_method_agreement({m: sm.input[m] for m in sm.params.methods}, out=sm.output.agreement)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: the report says so
