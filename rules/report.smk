# Reports: one per model, the comparison across models, and the gate (audit.fail_on) that decides
# the exit status once every report is written. report(...) registers them for `snakemake --report`.


rule render_report:
    input:
        unpack(
            lambda wc: {
                "manifest": manifest_of(wc),
                "dataset_info": path("dataset_info", dataset=dataset_of(wc.model)),
                "rejected": path("rejected", dataset=dataset_of(wc.model)),
                "train_metrics": path("train_metrics", model=wc.model),
                "history": path("history", model=wc.model),
                "eval_metrics": path("eval_metrics", model=wc.model),
                "audit_set": path("audit_set", model=wc.model),
                **report_inputs(config, wc.model),  # each section's stage outputs (cvaudit.sections)
            }
        ),
        template=TEMPLATES / "report.html.j2",
        section_templates=sorted((TEMPLATES / "sections").glob("*.html.j2")),
        macros=TEMPLATES / "macros.html.j2",
        css=TEMPLATES / "report.css",
    output:
        html=report(
            PATHS["report"],
            caption="../report/audit_report.rst",
            category="Audit reports",
            subcategory="{model}",
            labels={"model": "{model}", "file": "report (HTML)"},
        ),
        summary=report(
            PATHS["summary"],
            caption="../report/summary.rst",
            category="Audit reports",
            subcategory="{model}",
            labels={"model": "{model}", "file": "summary.json"},
        ),
        evidence=directory(PATHS["evidence"]),
        pdf=(
            report(
                PATHS["report_pdf"],
                caption="../report/audit_report.rst",
                category="Audit reports",
                subcategory="{model}",
                labels={"model": "{model}", "file": "report (PDF)"},
            )
            if config["report"]["pdf"]
            else []
        ),
    log:
        "logs/render_report/{model}.log",
    benchmark:
        "benchmarks/render_report/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("render_report", 4000),
        runtime=limit("render_report", 20),
    params:
        model_cfg=lambda wc: config["models"][wc.model],
        dataset_cfg=lambda wc: config["datasets"][dataset_of(wc.model)],
        settings=report_settings(config),
        benchmarks=lambda wc: benchmark_files(wc.model),
    script:
        "../scripts/render_report.py"


rule side_by_side:
    input:
        unpack(lambda wc: {f"model_{m}": path("weights", model=m) for m in models_of(wc.dataset)}),
        manifest=PATHS["manifest"],
    output:
        maps=PATHS["side_by_side"],
    log:
        "logs/side_by_side/{dataset}.log",
    benchmark:
        "benchmarks/side_by_side/{dataset}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("side_by_side", 4000),
        runtime=limit("side_by_side", 30),
    params:
        options={k: config["report"]["compare"][k] for k in ("methods", "images")},
        explain=lambda wc: {m: config["explain"].get(m, {}) for m in config["report"]["compare"]["methods"]},
        seed=config["seed"],
        device=config["device"],
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
            PATHS["comparison"],
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "comparison (HTML)"},
        ),
        summary=report(
            PATHS["comparison_summary"],
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "summary.json"},
        ),
        pdf=(
            report(
                PATHS["comparison_pdf"],
                caption="../report/compare.rst",
                category="Comparison",
                labels={"file": "comparison (PDF)"},
            )
            if config["report"]["pdf"]
            else []
        ),
    log:
        "logs/compare_models.log",
    benchmark:
        "benchmarks/compare_models.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        mem_mb=memory("compare_models", 4000),
        runtime=limit("compare_models", 30),
    params:
        models=lambda wc: config["models"],
        settings={k: config[k] for k in ("seed", "report")},
        benchmarks=lambda wc: {m: benchmark_files(m) for m in config["models"]},
    script:
        "../scripts/compare_models.py"


rule gate:
    input:
        unpack(lambda wc: {f"summary_{m}": path("summary", model=m) for m in config["models"]}),
    output:
        PATHS["gate"],
    log:
        "logs/gate.log",
    localrule: True
    conda:
        "../envs/cvaudit.yaml"
    params:
        fail_on=config["audit"]["fail_on"],
    script:
        "../scripts/gate.py"


# The exit status, apart from gate.json: a failed job loses its outputs, so the evidence (gate.json)
# is written by the rule above, which always succeeds, and this one only fails the run.
rule gate_check:
    input:
        gate=PATHS["gate"],
    output:
        touch(PATHS["gate_passed"]),
    log:
        "logs/gate_check.log",
    localrule: True
    conda:
        "../envs/cvaudit.yaml"
    script:
        "../scripts/gate_check.py"
