rule train_model:
    input:
        unpack(user_model_files),  # your checkpoint, model file and classes file: a change reruns the chain
        manifest=manifest_of,
    output:
        model=PATHS["weights"],
        history=PATHS["history"],
        metrics=PATHS["train_metrics"],
    log:
        "logs/train_model/{model}.log",
    benchmark:
        "benchmarks/train_model/{model}.tsv"
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("train_model", 6000),
        runtime=limit("train_model", 120),
    params:
        cfg=lambda wc: config["models"][wc.model],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_model.py"


rule evaluate_model:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        baseline=lambda wc: path("baseline", dataset=dataset_of(wc.model)),
    output:
        predictions=PATHS["predictions"],
        metrics=PATHS["eval_metrics"],
        audit_set=PATHS["audit_set"],
        probs=PATHS["probs"],
    log:
        "logs/evaluate_model/{model}.log",
    benchmark:
        "benchmarks/evaluate_model/{model}.tsv"
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("evaluate_model", 4000),
        runtime=limit("evaluate_model", 60),
    params:
        audit={k: v for k, v in config["audit"].items() if k != "fail_on"},  # the gate is not the evaluation's
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/evaluate_model.py"


# A model as an ONNX file: only when asked for (a target, or another model's arch onnx:FILE).
rule export_onnx:
    input:
        model=PATHS["weights"],
    output:
        onnx=PATHS["onnx_export"],
    log:
        "logs/export_onnx/{model}.log",
    benchmark:
        "benchmarks/export_onnx/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        mem_mb=memory("export_onnx", 2000),
        runtime=limit("export_onnx", 10),
    script:
        "../scripts/export_onnx.py"
