from cvaudit.compare import explain_side_by_side, render_comparison


def main(sm):
    inputs = dict(sm.input.items())
    models, settings = sm.params.models, sm.params.settings
    opts = settings["report"]["compare"]
    shared = {}
    for d in sm.params.datasets:
        paths = {m: inputs[f"model_{m}"] for m, c in models.items() if c["dataset"] == d}
        shared[d] = explain_side_by_side(paths, inputs[f"manifest_{d}"], opts["methods"], sm.params.explain,
                                         opts["images"], settings["seed"], sm.params.device, sm.threads)
    pick = lambda prefix: {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}  # noqa: E731
    render_comparison(pick("summary_"), models, pick("baseline_"), pick("cka_"), shared, settings,
                      template=sm.input.template, css=sm.input.css, out_html=sm.output.html,
                      out_summary=sm.output.summary, out_pdf=sm.output.get("pdf") or None,
                      benchmarks=sm.params.benchmarks, probs=pick("probs_"))


if __name__ == "__main__":
    from cvaudit.runlog import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
