from cvaudit.model.evaluate_model import evaluate_model


def main(sm):
    evaluate_model(sm.wildcards.model, sm.input.model, sm.input.manifest, sm.input.baseline, sm.params.audit,
                   seed=sm.params.seed, device=sm.params.device, threads=sm.threads,
                   out_predictions=sm.output.predictions, out_metrics=sm.output.metrics, out_audit=sm.output.audit_set,
                   out_probs=sm.output.probs)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
