rule ingest_dataset:
    input:
        fingerprint=dataset_fingerprint,
    output:
        manifest=PATHS["manifest"],
        rejected=PATHS["rejected"],
        info=PATHS["dataset_info"],
        images=directory(PATHS["images"]),
    log:
        "logs/ingest_dataset/{dataset}.log",
    benchmark:
        "benchmarks/ingest_dataset/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d, ds in config["datasets"].items() if ds["source"] != "planted_cue"),
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]  # parallel decoding checks
    resources:
        mem_mb=memory("ingest_dataset", 4000),
        runtime=limit("ingest_dataset", 30),
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        seed=config["seed"],
    script:
        "../scripts/ingest_dataset.py"


rule plant_cue:
    input:
        parent=lambda wc: path("manifest", dataset=config["datasets"][wc.dataset]["from"]),
    output:
        manifest=PATHS["manifest"],
        rejected=PATHS["rejected"],
        info=PATHS["dataset_info"],
        images=directory(PATHS["images"]),
    log:
        "logs/plant_cue/{dataset}.log",
    benchmark:
        "benchmarks/plant_cue/{dataset}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d, ds in config["datasets"].items() if ds["source"] == "planted_cue"),
    priority: 10
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("plant_cue", 2000),
        runtime=limit("plant_cue", 30),
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        seed=config["seed"],
    script:
        "../scripts/plant_cue.py"


rule fit_baseline:
    input:
        manifest=PATHS["manifest"],
    output:
        metrics=PATHS["baseline"],
    log:
        "logs/fit_baseline/{dataset}.log",
    benchmark:
        "benchmarks/fit_baseline/{dataset}.tsv"
    priority: 10  # the root of every chain: run first, so the many one-thread jobs later fill both cores
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("fit_baseline", 4000),
        runtime=limit("fit_baseline", 30),
    params:
        options=config["baseline"],
        seed=config["seed"],
    script:
        "../scripts/fit_baseline.py"


# A few properties of every test image, once per dataset (the slices of rules/robust.smk read them).
rule image_properties:
    input:
        manifest=PATHS["manifest"],
    output:
        properties=PATHS["properties"],
    log:
        "logs/image_properties/{dataset}.log",
    benchmark:
        "benchmarks/image_properties/{dataset}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]
    resources:
        mem_mb=memory("image_properties", 2000),
        runtime=limit("image_properties", 60),
    script:
        "../scripts/image_properties.py"


rule data_audit:
    input:
        manifest=PATHS["manifest"],
    output:
        audit=PATHS["data_audit"],
    log:
        "logs/data_audit/{dataset}.log",
    benchmark:
        "benchmarks/data_audit/{dataset}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("data_audit", 4000),
        runtime=limit("data_audit", 60),
    params:
        options={k: v for k, v in config["data_audit"].items() if k != "embedding"},  # a model's job, not this one
        seed=config["seed"],
    script:
        "../scripts/data_audit.py"
