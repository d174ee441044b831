rule ingest_dataset:
    input:
        fingerprint=dataset_fingerprint,
    wildcard_constraints:
        dataset=one_of(d for d, ds in config["datasets"].items() if ds["source"] != "planted_cue"),
    output:
        manifest="results/data/{dataset}/manifest.csv",
        rejected="results/data/{dataset}/rejected.csv",
        info="results/data/{dataset}/dataset.json",
        images=directory("results/data/{dataset}/images"),
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        seed=config["seed"],
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    threads: config["threads"]  # parallel decoding checks
    resources:
        mem_mb=memory("ingest_dataset", 4000),
        runtime=limit("ingest_dataset", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/ingest_dataset/{dataset}.log",
    benchmark:
        "benchmarks/ingest_dataset/{dataset}.tsv"
    script:
        "../scripts/ingest_dataset.py"


rule plant_cue:
    input:
        parent=lambda wc: f"results/data/{config['datasets'][wc.dataset]['from']}/manifest.csv",
    output:
        manifest="results/data/{dataset}/manifest.csv",
        rejected="results/data/{dataset}/rejected.csv",
        info="results/data/{dataset}/dataset.json",
        images=directory("results/data/{dataset}/images"),
    wildcard_constraints:
        dataset=one_of(d for d, ds in config["datasets"].items() if ds["source"] == "planted_cue"),
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        seed=config["seed"],
    priority: 10
    resources:
        mem_mb=memory("plant_cue", 2000),
        runtime=limit("plant_cue", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/plant_cue/{dataset}.log",
    benchmark:
        "benchmarks/plant_cue/{dataset}.tsv"
    script:
        "../scripts/plant_cue.py"


rule fit_baseline:
    input:
        manifest="results/data/{dataset}/manifest.csv",
    output:
        metrics="results/data/{dataset}/baseline.json",
    params:
        options=config["baseline"],
        seed=config["seed"],
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    resources:
        mem_mb=memory("fit_baseline", 4000),
        runtime=limit("fit_baseline", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/fit_baseline/{dataset}.log",
    benchmark:
        "benchmarks/fit_baseline/{dataset}.tsv"
    script:
        "../scripts/fit_baseline.py"


# A few properties of every test image, once per dataset (the slices of rules/robust.smk read them).
rule image_properties:
    input:
        manifest="results/data/{dataset}/manifest.csv",
    output:
        properties="results/data/{dataset}/properties.csv",
    threads: config["threads"]
    resources:
        mem_mb=memory("image_properties", 2000),
        runtime=limit("image_properties", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/image_properties/{dataset}.log",
    benchmark:
        "benchmarks/image_properties/{dataset}.tsv"
    script:
        "../scripts/image_properties.py"


rule data_audit:
    input:
        manifest="results/data/{dataset}/manifest.csv",
    output:
        audit="results/data/{dataset}/data_audit.npz",
    params:
        options={k: v for k, v in config["data_audit"].items() if k != "embedding"},  # a model's job, not this one
        seed=config["seed"],
    resources:
        mem_mb=memory("data_audit", 4000),
        runtime=limit("data_audit", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/data_audit/{dataset}.log",
    benchmark:
        "benchmarks/data_audit/{dataset}.tsv"
    script:
        "../scripts/data_audit.py"
