from cvaudit.report.compare_models import run_gate


def main(sm):
    run_gate(dict(sm.input.items()), sm.params.fail_on, sm.output[0])


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
