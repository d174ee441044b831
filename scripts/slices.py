from cvaudit.robust.slices import run_slices


def main(sm):
    run_slices(sm.input.properties, sm.input.probs, sm.input.manifest, sm.params.options, list(sm.params.groups),
               sm.output.slices, seed=sm.params.seed, embeddings=dict(sm.input.items()).get("embeddings"))


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
