from cvaudit.data.data_audit import run_data_audit


def main(sm):
    run_data_audit(sm.input.manifest, sm.params.options, seed=sm.params.seed, out=sm.output.audit)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
