# Reports: one per model, the comparison across models, and the gate (audit.fail_on) that decides
# the exit status once every report is written. report(...) registers them for `snakemake --report`.


rule render_report:
    input:
        unpack(
            lambda wc: {
                "manifest": manifest_of(wc),
                "dataset_info": f"results/data/{dataset_of(wc.model)}/dataset.json",
                "rejected": f"results/data/{dataset_of(wc.model)}/rejected.csv",
                "train_metrics": f"results/{wc.model}/train/metrics.json",
                "history": f"results/{wc.model}/train/history.csv",
                "eval_metrics": f"results/{wc.model}/eval/metrics.json",
                "audit_set": f"results/{wc.model}/eval/audit_set.npz",
                **report_inputs(config, wc.model),  # each section's stage outputs (cvaudit.sections)
            }
        ),
        template=TEMPLATES / "report.html.j2",
        section_templates=sorted((TEMPLATES / "sections").glob("*.html.j2")),
        macros=TEMPLATES / "macros.html.j2",
        css=TEMPLATES / "report.css",
    output:
        html=report(
            "results/{model}/report/report.html",
            caption="../report/audit_report.rst",
            category="Audit reports",
            subcategory="{model}",
            labels={"model": "{model}", "file": "report (HTML)"},
        ),
        summary=report(
            "results/{model}/report/summary.json",
            caption="../report/summary.rst",
            category="Audit reports",
            subcategory="{model}",
            labels={"model": "{model}", "file": "summary.json"},
        ),
        evidence=directory("results/{model}/report/evidence"),
        pdf=report(
            "results/{model}/report/report.pdf",
            caption="../report/audit_report.rst",
            category="Audit reports",
            subcategory="{model}",
            labels={"model": "{model}", "file": "report (PDF)"},
        )
        if config["report"]["pdf"]
        else [],
    params:
        model_cfg=lambda wc: config["models"][wc.model],
        dataset_cfg=lambda wc: config["datasets"][dataset_of(wc.model)],
        settings={k: config[k] for k in ("seed", "device", "explain", "represent", "robustness", "baseline", "data_audit",
                                         "clever_hans", "verdicts", "report")}
        | {"audit": {k: v for k, v in config["audit"].items() if k != "fail_on"}},  # fail_on: only the gate
        benchmarks=lambda wc: benchmark_files(wc.model),
    resources:
        mem_mb=memory("render_report", 4000),
        runtime=limit("render_report", 20),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/render_report/{model}.log",
    benchmark:
        "benchmarks/render_report/{model}.tsv"
    script:
        "../scripts/render_report.py"


rule side_by_side:
    input:
        unpack(lambda wc: {f"model_{m}": f"results/{m}/model.safetensors" for m in models_of(wc.dataset)}),
        manifest="results/data/{dataset}/manifest.csv",
    output:
        maps="results/compare/{dataset}/side_by_side.npz",
    params:
        options={k: config["report"]["compare"][k] for k in ("methods", "images")},
        explain=lambda wc: {m: config["explain"].get(m, {}) for m in config["report"]["compare"]["methods"]},
        seed=config["seed"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("side_by_side", 4000),
        runtime=limit("side_by_side", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/side_by_side/{dataset}.log",
    benchmark:
        "benchmarks/side_by_side/{dataset}.tsv"
    script:
        "../scripts/side_by_side.py"


rule compare_models:
    input:
        unpack(compare_inputs),
        template=TEMPLATES / "compare.html.j2",
        macros=TEMPLATES / "macros.html.j2",
        css=TEMPLATES / "report.css",
    output:
        html=report(
            "results/compare/report.html",
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "comparison (HTML)"},
        ),
        summary=report(
            "results/compare/summary.json",
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "summary.json"},
        ),
        pdf=report(
            "results/compare/report.pdf",
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "comparison (PDF)"},
        )
        if config["report"]["pdf"]
        else [],
    params:
        models=lambda wc: config["models"],
        settings={k: config[k] for k in ("seed", "report")},
        benchmarks=lambda wc: {m: benchmark_files(m) for m in config["models"]},
    threads: 1
    resources:
        mem_mb=memory("compare_models", 4000),
        runtime=limit("compare_models", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/compare_models.log",
    benchmark:
        "benchmarks/compare_models.tsv"
    script:
        "../scripts/compare_models.py"


rule gate:
    input:
        unpack(lambda wc: {f"summary_{m}": f"results/{m}/report/summary.json" for m in config["models"]}),
    output:
        "results/gate.json",
    params:
        fail_on=config["audit"]["fail_on"],
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/gate.log",
    localrule: True
    script:
        "../scripts/gate.py"


# The exit status, apart from gate.json: a failed job loses its outputs, so the evidence (gate.json)
# is written by the rule above, which always succeeds, and this one only fails the run.
rule gate_check:
    input:
        gate="results/gate.json",
    output:
        touch("results/.gate_passed"),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/gate_check.log",
    localrule: True
    script:
        "../scripts/gate_check.py"
