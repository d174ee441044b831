# Behaviour under change: calibration and the shuffled-label test (invariance per transform family and
# adversarial per attack are sharded stages: rules/sharded.smk).


rule calibrate:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        probs=PATHS["probs"],
    output:
        calibration=PATHS["calibration"],
    log:
        "logs/calibrate/{model}.log",
    benchmark:
        "benchmarks/calibrate/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("calibrate", 4000),
        runtime=limit("calibrate", 30),
    params:
        options=config["robustness"]["calibration"],
        groups=lambda wc: config["datasets"][dataset_of(wc.model)]["groups"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/calibrate.py"


rule shuffled_labels:
    input:
        manifest=manifest_of,
    output:
        curves=PATHS["shuffled_labels"],
    log:
        "logs/shuffled_labels/{model}.log",
    benchmark:
        "benchmarks/shuffled_labels/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("shuffled_labels", 6000),
        runtime=limit("shuffled_labels", 240),
    params:
        cfg=lambda wc: config["models"][wc.model],
        options=config["robustness"]["shuffled_labels"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/shuffled_labels.py"


# Where the model fails: slices and groups per model, over the image properties of its dataset
# (rules/data.smk).
rule slices:
    input:
        unpack(
            lambda wc: (
                {"embeddings": path("embeddings", model=wc.model)} if error_clusters_on(config, wc.model) else {}
            )
        ),
        properties=lambda wc: path("properties", dataset=dataset_of(wc.model)),
        probs=PATHS["probs"],
        manifest=manifest_of,
    output:
        slices=PATHS["slices"],
    log:
        "logs/slices/{model}.log",
    benchmark:
        "benchmarks/slices/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("slices", 2000),
        runtime=limit("slices", 30),
    params:
        options=config["robustness"]["slices"],
        groups=lambda wc: config["datasets"][dataset_of(wc.model)]["groups"],
        seed=config["seed"],
    script:
        "../scripts/slices.py"


rule shape_texture:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
    output:
        results=PATHS["shape_texture"],
    log:
        "logs/shape_texture/{model}.log",
    benchmark:
        "benchmarks/shape_texture/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("shape_texture", 4000),
        runtime=limit("shape_texture", 30),
    params:
        options=config["robustness"]["shape_texture"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/shape_texture.py"


rule corruptions:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        reference=lambda wc: corruption_reference_files(config, wc.model),  # its CE and mCE are relative to it
    output:
        results=PATHS["corruptions"],
    log:
        "logs/corruptions/{model}.log",
    benchmark:
        "benchmarks/corruptions/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("corruptions", 4000),
        runtime=limit("corruptions", 120),
    params:
        options={k: v for k, v in config["robustness"]["corruptions"].items() if k != "reference"},  # the input names it
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/corruptions.py"


rule shift:
    input:
        unpack(lambda wc: {f"shift_{d}": path("manifest", dataset=d) for d in config["models"][wc.model]["shift_sets"]}),
        model=PATHS["weights"],
        manifest=manifest_of,
        probs=PATHS["probs"],
    output:
        shift=PATHS["shift"],
    log:
        "logs/shift/{model}.log",
    benchmark:
        "benchmarks/shift/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=memory("shift", 4000),
        runtime=limit("shift", 60),
    params:
        options=config["robustness"]["shift"],
        descriptions=lambda wc: {
            d: config["datasets"][d]["description"] for d in config["models"][wc.model]["shift_sets"]
        },
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/shift.py"
