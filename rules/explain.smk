rule explain:
    input:
        model="results/{model}/model.safetensors",
        audit_set="results/{model}/eval/audit_set.npz",
    output:
        maps="results/{model}/explain/{method}/maps.npz",
    params:
        options=lambda wc: config["explain"].get(wc.method, {}),
        seed=config["seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/explain/{model}.{method}.log",
    benchmark:
        "benchmarks/explain/{model}.{method}.tsv"
    script:
        "../scripts/explain.py"
