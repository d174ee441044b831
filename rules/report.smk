rule render_report:
    input:
        unpack(
            lambda wc: {
                "manifest": manifest_of(wc),
                "train_metrics": f"results/{wc.model}/train/metrics.json",
                "history": f"results/{wc.model}/train/history.csv",
                "eval_metrics": f"results/{wc.model}/eval/metrics.json",
                "audit_set": f"results/{wc.model}/eval/audit_set.npz",
                **explain_maps(wc),
                **represent_files(wc),
                **robust_files(wc),
            }
        ),
        template=TEMPLATES / "report.html.j2",
        css=TEMPLATES / "report.css",
    output:
        html="results/{model}/report/report.html",
        summary="results/{model}/report/summary.json",
        pdf="results/{model}/report/report.pdf" if config["report"]["pdf"] else [],
    params:
        model_cfg=lambda wc: config["models"][wc.model],
        dataset_cfg=lambda wc: config["datasets"][dataset_of(wc.model)],
        settings={k: config[k] for k in ("seed", "device", "audit", "explain", "represent", "robustness", "baseline", "verdicts", "report")},
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/render_report/{model}.log",
    benchmark:
        "benchmarks/render_report/{model}.tsv"
    script:
        "../scripts/render_report.py"
