# What the layers and units see. Each rule gets only its own options, so changing one view's
# settings reruns that view (and the report), not the others.


rule represent:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
    output:
        embeddings=PATHS["embeddings"],
    log:
        "logs/represent/{model}.log",
    benchmark:
        "benchmarks/represent/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("represent", 6000),
        runtime=limit("represent", 60),
    params:
        options={k: config["represent"][k] for k in ("k", "layers", "cka_images", "train_images")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/represent.py"


rule embedding_duplicates:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        embeddings=PATHS["embeddings"],
        audit=lambda w: path("data_audit", dataset=dataset_of(w.model)),
    output:
        duplicates=PATHS["embedding_duplicates"],
    log:
        "logs/embedding_duplicates/{model}.log",
    benchmark:
        "benchmarks/embedding_duplicates/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("embedding_duplicates", 6000),
        runtime=limit("embedding_duplicates", 60),
    params:
        options=config["data_audit"]["embedding"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/embedding_duplicates.py"


rule inspect_units:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        audit_set=PATHS["audit_set"],
    output:
        units=PATHS["units"],
    log:
        "logs/inspect_units/{model}.log",
    benchmark:
        "benchmarks/inspect_units/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("inspect_units", 6000),
        runtime=limit("inspect_units", 60),
    params:
        options=config["represent"]["units"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/inspect_units.py"


rule visualise_ascent:
    input:
        model=PATHS["weights"],
        units=PATHS["units"],
    output:
        ascent=PATHS["ascent"],
    log:
        "logs/visualise_ascent/{model}.log",
    benchmark:
        "benchmarks/visualise_ascent/{model}.tsv"
    priority: 5  # a long job (gradient ascent): start it early, as the long explain and attack jobs
    conda:
        "../envs/cvaudit.yaml"
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("visualise_ascent", 6000),
        runtime=limit("visualise_ascent", 60),
    params:
        options=config["represent"]["ascent"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/visualise_ascent.py"


rule compare_representations:
    input:
        unpack(lambda wc: {m: path("embeddings", model=m) for m in cka_models(config, wc.dataset)}),
    output:
        cka=PATHS["representations"],
    log:
        "logs/compare_representations/{dataset}.log",
    benchmark:
        "benchmarks/compare_representations/{dataset}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    resources:
        mem_mb=memory("compare_representations", 2000),
        runtime=limit("compare_representations", 10),
    params:
        seed=config["seed"],
    script:
        "../scripts/compare_representations.py"


rule layer_views:
    input:
        model=PATHS["weights"],
        manifest=manifest_of,
        audit_set=PATHS["audit_set"],
    output:
        views=PATHS["layers"],
    log:
        "logs/layer_views/{model}.log",
    benchmark:
        "benchmarks/layer_views/{model}.tsv"
    conda:
        "../envs/cvaudit.yaml"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("layer_views", 4000),
        runtime=limit("layer_views", 60),
    params:
        units={k: config["represent"]["units"][k] for k in ("layers", "stages")},
        options=config["represent"]["layer_views"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/layer_views.py"
