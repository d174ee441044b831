# What the explain stage's maps say together (the explain stage itself is sharded: rules/sharded.smk).


rule method_agreement:
    input:
        unpack(lambda wc: {m: f"results/{wc.model}/explain/{m}/maps.npz" for m in config["explain"]["methods"]}),
    output:
        agreement="results/{model}/explain/agreement.json",
    params:
        methods=config["explain"]["methods"],
    threads: 1
    resources:
        mem_mb=memory("method_agreement", 2000),
        runtime=limit("method_agreement", 10),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/method_agreement/{model}.log",
    benchmark:
        "benchmarks/method_agreement/{model}.tsv"
    script:
        "../scripts/method_agreement.py"


rule clever_hans:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
    output:
        results="results/{model}/explain/clever_hans.npz",
    params:
        options=config["clever_hans"],
        seed=config["seed"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("clever_hans", 4000),
        runtime=limit("clever_hans", 30),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/clever_hans/{model}.log",
    benchmark:
        "benchmarks/clever_hans/{model}.tsv"
    script:
        "../scripts/clever_hans.py"
