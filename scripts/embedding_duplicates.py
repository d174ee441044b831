from cvaudit.represent.embedding_duplicates import run_embedding_duplicates


def main(sm):
    run_embedding_duplicates(sm.input.model, sm.input.manifest, sm.input.embeddings, sm.input.audit, sm.params.options,
                             seed=sm.params.seed, device=sm.params.device, threads=sm.threads,
                             out=sm.output.duplicates)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
