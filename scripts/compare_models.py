from cvaudit.core.files import stage_failure
from cvaudit.report.compare_models import render_comparison
from cvaudit.report.side_by_side import load_side_by_side


def main(sm):
    inputs = dict(sm.input.items())
    pick = lambda prefix: {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}  # noqa: E731
    shared = {d: {"failed": rec} if (rec := stage_failure(p)) else load_side_by_side(p) for d, p in pick("side_").items()}
    render_comparison(pick("summary_"), sm.params.models, pick("baseline_"), pick("cka_"), shared, sm.params.settings,
                      template=sm.input.template, css=sm.input.css, out_html=sm.output.html,
                      out_summary=sm.output.summary, out_pdf=sm.output.get("pdf") or None,
                      benchmarks=sm.params.benchmarks, probs=pick("probs_"))


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
