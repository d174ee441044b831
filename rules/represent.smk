# What the layers and units see. Each rule gets only its own options, so changing one view's
# settings reruns that view (and the report), not the others.


rule represent:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
    output:
        embeddings="results/{model}/represent/embeddings.npz",
    params:
        options={k: config["represent"][k] for k in ("k", "layers", "cka_images")},
        seed=config["seed"],
        device=config["device"],
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("represent", 6000),
        runtime=limit("represent", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/represent/{model}.log",
    benchmark:
        "benchmarks/represent/{model}.tsv"
    script:
        "../scripts/represent.py"



rule embedding_duplicates:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        embeddings="results/{model}/represent/embeddings.npz",
        audit=lambda w: f"results/data/{dataset_of(w.model)}/data_audit.npz",
    output:
        duplicates="results/{model}/represent/duplicates.npz",
    params:
        options=config["data_audit"]["embedding"],
        seed=config["seed"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("embedding_duplicates", 6000),
        runtime=limit("embedding_duplicates", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/embedding_duplicates/{model}.log",
    benchmark:
        "benchmarks/embedding_duplicates/{model}.tsv"
    script:
        "../scripts/embedding_duplicates.py"

rule inspect_units:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        audit_set="results/{model}/eval/audit_set.npz",
    output:
        units="results/{model}/represent/units.npz",
    params:
        options=config["represent"]["units"],
        seed=config["seed"],
        device=config["device"],
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("inspect_units", 6000),
        runtime=limit("inspect_units", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/inspect_units/{model}.log",
    benchmark:
        "benchmarks/inspect_units/{model}.tsv"
    script:
        "../scripts/inspect_units.py"


rule visualise_ascent:
    input:
        model="results/{model}/model.safetensors",
        units="results/{model}/represent/units.npz",
    output:
        ascent="results/{model}/represent/ascent.npz",
    params:
        options=config["represent"]["ascent"],
        seed=config["seed"],
        device=config["device"],
    priority: 5  # a long job (gradient ascent): start it early, as the long explain and attack jobs
    threads: 1  # short jobs: two side by side use the cores better than one on both
    resources:
        gpu=GPU,
        mem_mb=memory("visualise_ascent", 6000),
        runtime=limit("visualise_ascent", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/visualise_ascent/{model}.log",
    benchmark:
        "benchmarks/visualise_ascent/{model}.tsv"
    script:
        "../scripts/visualise_ascent.py"


rule compare_representations:
    input:
        unpack(lambda wc: {m: f"results/{m}/represent/embeddings.npz" for m in models_of(wc.dataset)}),
    output:
        cka="results/compare/{dataset}/representations.json",
    params:
        seed=config["seed"],
    resources:
        mem_mb=memory("compare_representations", 2000),
        runtime=limit("compare_representations", 10),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/compare_representations/{dataset}.log",
    benchmark:
        "benchmarks/compare_representations/{dataset}.tsv"
    script:
        "../scripts/compare_representations.py"


rule layer_views:
    input:
        model="results/{model}/model.safetensors",
        manifest=manifest_of,
        audit_set="results/{model}/eval/audit_set.npz",
    output:
        views="results/{model}/represent/layers.npz",
    params:
        units={k: config["represent"]["units"][k] for k in ("layers", "stages")},
        options=config["represent"]["layer_views"],
        seed=config["seed"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=memory("layer_views", 4000),
        runtime=limit("layer_views", 60),
    conda:
        "../envs/cvaudit.yaml"
    log:
        "logs/layer_views/{model}.log",
    benchmark:
        "benchmarks/layer_views/{model}.tsv"
    script:
        "../scripts/layer_views.py"
