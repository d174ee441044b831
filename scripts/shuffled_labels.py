from cvaudit.robust.shuffled_labels import run_shuffled_labels


def main(sm):
    run_shuffled_labels(sm.wildcards.model, sm.params.cfg, sm.input.manifest, sm.params.options, seed=sm.params.seed,
                        device=sm.params.device, threads=sm.threads, out=sm.output.curves)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake, optional=True)  # noqa: F821 — injected by Snakemake. optional: a failure is reported, not fatal
