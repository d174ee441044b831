from cvaudit.model.train_model import train_model


def main(sm):
    cfg = sm.params.cfg
    if cfg["arch"] == "ensemble":  # nothing to train: its members' saved models, together
        from cvaudit.model.ensemble import assemble
        assemble(sm.wildcards.model, cfg, {m: sm.input[f"member_{m}"] for m in cfg["members"]},
                 out_model=sm.output.model, out_history=sm.output.history, out_metrics=sm.output.metrics)
        return
    train_model(sm.wildcards.model, cfg, sm.input.manifest, seed=sm.params.seed, device=sm.params.device,
                threads=sm.threads, out_model=sm.output.model, out_history=sm.output.history,
                out_metrics=sm.output.metrics)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
