from cvaudit.represent.represent import run_represent


def main(sm):
    run_represent(sm.input.model, sm.input.manifest, sm.params.options, seed=sm.params.seed, device=sm.params.device,
                  threads=sm.threads, out=sm.output.embeddings)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
