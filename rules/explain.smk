# What the explain stage's maps say together (the explain stage itself is sharded: rules/sharded.smk).


rule method_agreement:
    input:
        unpack(lambda wc: {m: path("maps", model=wc.model, method=m) for m in config["explain"]["methods"]}),
    output:
        agreement=PATHS["agreement"],
    log:
        "logs/method_agreement/{model}.log",
    benchmark:
        "benchmarks/method_agreement/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        mem_mb=memory("method_agreement", 2000),
        runtime=limit("method_agreement", 10),
    params:
        methods=config["explain"]["methods"],
    script:
        "../scripts/method_agreement.py"


rule clever_hans:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
    output:
        results=PATHS["clever_hans"],
    log:
        "logs/clever_hans/{model}.log",
    benchmark:
        "benchmarks/clever_hans/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("clever_hans", 4000),
        runtime=limit("clever_hans", 30),
    params:
        options=config["clever_hans"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/clever_hans.py"


# What the model uses, in the user's words: TCAV of the concepts the config names (config key concepts).
rule tcav:
    input:
        unpack(lambda wc: {f"concept_{i}": f for i, f in enumerate(concept_inputs(config))}),
        model=PATHS["weights"],
        manifest=manifest_of,
    output:
        results=PATHS["tcav"],
    log:
        "logs/tcav/{model}.log",
    benchmark:
        "benchmarks/tcav/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("tcav", 4000),
        runtime=limit("tcav", 30),
    params:
        concepts=config["concepts"],
        options=config["explain"]["tcav"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/tcav.py"
