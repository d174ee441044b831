rule explain:
    input:
        model="results/{model}/model.safetensors",
        audit_set="results/{model}/eval/audit_set.npz",
    output:
        maps="results/{model}/explain/{method}/maps.npz",
    params:
        options=lambda wc: config["explain"].get(wc.method, {}),
        trust=config["explain"]["trust"],
        seed=config["seed"],
        device=config["device"],
    threads: 1  # many small jobs: two run side by side on two cores instead of one on both
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/explain/{model}.{method}.log",
    benchmark:
        "benchmarks/explain/{model}.{method}.tsv"
    script:
        "../scripts/explain.py"
