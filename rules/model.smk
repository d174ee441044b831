rule train_model:
    input:
        unpack(user_model_files),  # your checkpoint, model file and classes file: a change reruns the chain
        manifest=manifest_of,
    output:
        model="results/{model}/model.safetensors",
        history="results/{model}/train/history.csv",
        metrics="results/{model}/train/metrics.json",
    params:
        cfg=lambda wc: config["models"][wc.model],
        seed=config["seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("train_model", 6000),
        runtime=limit("train_model", 120),
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/train_model/{model}.log",
    benchmark:
        "benchmarks/train_model/{model}.tsv"
    script:
        "../scripts/train_model.py"


rule evaluate_model:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        baseline=lambda wc: f"results/data/{dataset_of(wc.model)}/baseline.json",
    output:
        predictions="results/{model}/eval/predictions.csv",
        metrics="results/{model}/eval/metrics.json",
        audit_set="results/{model}/eval/audit_set.npz",
        probs="results/{model}/eval/probs.npz",
    params:
        audit={k: v for k, v in config["audit"].items() if k != "fail_on"},  # the gate is not the evaluation's
        seed=config["seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("evaluate_model", 4000),
        runtime=limit("evaluate_model", 60),
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/evaluate_model/{model}.log",
    benchmark:
        "benchmarks/evaluate_model/{model}.tsv"
    script:
        "../scripts/evaluate_model.py"
