rule explain_shard:
    input:
        model="results/{model}/model.safetensors",
        audit_set="results/{model}/eval/audit_set.npz",
    output:
        part="results/{model}/explain/{method}/shards/{shard}.npz",
    params:
        options=lambda wc: config["explain"].get(wc.method, {}),
        trust=config["explain"]["trust"],
        seed=config["seed"],
        device=config["device"],
        shard_size=config["shard_size"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/explain_shard/{model}.{method}.{shard}.log",
    benchmark:
        "benchmarks/explain_shard/{model}.{method}.{shard}.tsv"
    script:
        "../scripts/explain_shard.py"


rule explain:
    input:
        model="results/{model}/model.safetensors",
        audit_set="results/{model}/eval/audit_set.npz",
        parts=lambda wc: shard_files(f"results/{wc.model}/explain/{wc.method}/shards/{{shard}}.npz",
                                     config["audit"]["max_images"]),
    output:
        maps="results/{model}/explain/{method}/maps.npz",
    params:
        options=lambda wc: config["explain"].get(wc.method, {}),
        trust=config["explain"]["trust"],
        seed=config["seed"],
        device=config["device"],
    threads: 1  # many small jobs: two run side by side on two cores instead of one on both
    resources:
        gpu=GPU,
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
