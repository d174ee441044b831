# Behaviour under change: calibration, invariance per transform family, adversarial per attack.


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


rule invariance_shard:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
    output:
        part="results/{model}/robust/shards/invariance/{family}/{shard}.npz",
    params:
        options=lambda wc: {"max_images": config["robustness"]["max_images"],
                            "severities": config["robustness"]["invariance"][wc.family]},
        seed=config["seed"],
        device=config["device"],
        shard_size=config["shard_size"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/invariance_shard/{model}.{family}.{shard}.log",
    benchmark:
        "benchmarks/invariance_shard/{model}.{family}.{shard}.tsv"
    script:
        "../scripts/invariance_shard.py"


rule invariance:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        parts=lambda wc: shard_files(f"results/{wc.model}/robust/shards/invariance/{wc.family}/{{shard}}.npz",
                                     config["robustness"]["max_images"]),
    output:
        curve="results/{model}/robust/invariance/{family}.json",
    params:
        options=lambda wc: {"max_images": config["robustness"]["max_images"],
                            "severities": config["robustness"]["invariance"][wc.family]},
        drift=config["robustness"]["drift"],
        seed=config["seed"],
        device=config["device"],
    threads: 1  # many small jobs: two run side by side on two cores
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/invariance/{model}.{family}.log",
    benchmark:
        "benchmarks/invariance/{model}.{family}.tsv"
    script:
        "../scripts/invariance.py"


rule adversarial_shard:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
    output:
        part="results/{model}/robust/shards/adversarial/{attack}/{shard}.npz",
    params:
        options={k: v for k, v in config["robustness"]["adversarial"].items() if k not in ("enabled", "attacks")},
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
        "logs/adversarial_shard/{model}.{attack}.{shard}.log",
    benchmark:
        "benchmarks/adversarial_shard/{model}.{attack}.{shard}.tsv"
    script:
        "../scripts/adversarial_shard.py"


rule adversarial:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        parts=lambda wc: shard_files(f"results/{wc.model}/robust/shards/adversarial/{wc.attack}/{{shard}}.npz",
                                     config["robustness"]["adversarial"]["max_images"]),
    output:
        result="results/{model}/robust/adversarial/{attack}.npz",
    params:
        options={k: v for k, v in config["robustness"]["adversarial"].items() if k not in ("enabled", "attacks")},
        seed=config["seed"],
        device=config["device"],
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/adversarial/{model}.{attack}.log",
    benchmark:
        "benchmarks/adversarial/{model}.{attack}.tsv"
    script:
        "../scripts/adversarial.py"


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
