from cvaudit.train import train_model


def main(sm):
    train_model(sm.wildcards.model, sm.params.cfg, sm.input.manifest, seed=sm.params.seed, device=sm.params.device,
                threads=sm.threads, out_model=sm.output.model, out_history=sm.output.history,
                out_metrics=sm.output.metrics)


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
