from cvaudit.report.compare_models import check_gate


def main(sm):
    check_gate(sm.input.gate)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
