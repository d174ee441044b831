from cvaudit.report.render_report import render_report


def main(sm):
    inputs = dict(sm.input.items())
    render_report(sm.wildcards.model, inputs, sm.params.model_cfg, sm.params.dataset_cfg, sm.params.settings,
                  template=sm.input.template, css=sm.input.css, out_html=sm.output.html,
                  out_summary=sm.output.summary, out_pdf=sm.output.get("pdf") or None,
                  benchmarks=sm.params.benchmarks, out_evidence=sm.output.evidence)


if __name__ == "__main__":
    from cvaudit.core.job import run

    run(main, snakemake)  # noqa: F821 — injected by Snakemake
