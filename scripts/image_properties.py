from cvaudit.data.image_properties import compute_properties


def main(sm):
    compute_properties(sm.input.manifest, sm.output.properties, workers=sm.threads)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
