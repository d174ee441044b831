# Behaviour under change: calibration and the shuffled-label test (invariance per transform family and
# adversarial per attack are sharded stages: rules/sharded.smk).


rule calibrate:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        probs="results/{model}/eval/probs.npz",
    output:
        calibration="results/{model}/robust/calibration.json",
    params:
        options=config["robustness"]["calibration"],
        seed=config["seed"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/calibrate/{model}.log",
    benchmark:
        "benchmarks/calibrate/{model}.tsv"
    script:
        "../scripts/calibrate.py"


rule shuffled_labels:
    input:
        manifest=manifest_of,
    output:
        curves="results/{model}/robust/shuffled_labels.json",
    params:
        cfg=lambda wc: config["models"][wc.model],
        options=config["robustness"]["shuffled_labels"],
        seed=config["seed"],
        device=config["device"],
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=6000,
        runtime=240,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/shuffled_labels/{model}.log",
    benchmark:
        "benchmarks/shuffled_labels/{model}.tsv"
    script:
        "../scripts/shuffled_labels.py"
