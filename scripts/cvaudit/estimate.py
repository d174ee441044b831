"""How long a run will take, before it starts: a cost model per stage and model.

Each stage's work is counted in model passes (one image through the model once; a gradient counts
GRADIENT passes) from its options: steps, samples, restarts, queries, severities, and the images it
samples. One pass's cost is measured once per architecture, input size, device and thread count by a
few timed batches of the model built with random weights (weights do not change the cost), and cached.
Work that is not model passes (a job's start-up, corruption and ROAD's image operations, rendering)
is a per-job or per-image constant measured on a 2-core CPU. The estimate is the sum over jobs, spread
over the cores; it is meant to be right within a factor of two, and the table says which stages cost
most so that a user sees what to cut.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cvaudit.sections import attacks_for, one_job, stage_on, trained_here

GRADIENT = 3.0  # a forward and a backward pass, in forward passes
TRAINING = 6.0  # a training step per image, in forward passes: the gradient, augmentation, loading and the optimiser
START_UP = 6.0  # seconds a job pays before its work: 2.8 alone (tools/bench_stages.py), about 6 two at a time on 2 cores
START_LIGHT = 2.5  # the same for a job that never imports torch (ingestion, image properties, slices)
ITEM_START = 1.5  # seconds each further method, family or attack costs in a job of several (split_jobs false) before
#                   its work: the model built and read again, the data, the method's library (1-2 s measured per
#                   method in the test config's explain jobs, two at a time on 2 cores)
PER_IMAGE_CPU = {"corruptions": 0.001, "road": 0.02, "data_audit": 0.015, "transform": 0.0005,
                 "cue_conflict": 0.002}  # seconds per image at 28 px, times the pixels over 28 x 28
EARLY_STOP = 0.5  # the attacks stop on images already fooled: about half their budget on average (measured)
REPORT_SECONDS = 20.0  # one report: figures, HTML and the PDF
UNMEASURED_PASS = 1e-6  # seconds per pass per pixel where no pass was timed: EfficientNet-Lite0 at 224 px on 2 CPU
#                         threads measures 0.04 s (8e-7 per pixel); a guess that errs long, for time limits


def dataset_counts(config: dict, name: str, results: str | Path = "results") -> dict:
    """Images per split, from an earlier ingestion where there is one, else from the source and the config."""
    ds = config["datasets"][name]
    done = Path(results) / "data" / name / "dataset.json"
    if done.exists():
        try:
            counts = json.loads(done.read_text())["counts"]
            return {s: sum(c.get(s, 0) for c in counts.values()) for s in ("train", "val", "test")}
        except (OSError, ValueError, KeyError):
            pass
    if ds["source"] == "planted_cue":
        return dataset_counts(config, ds["from"], results)
    n = {"foolbox_imagenet": 20, "lfw_subset": 200}.get(ds["source"])
    if n is None:
        stat = Path(results) / "data" / name / "source.json"  # written at planning: the files listed
        try:
            n = int(json.loads(stat.read_text())["files"]) if ds["source"] == "imagefolder" else None
        except (OSError, ValueError, KeyError):
            n = None
    cap = ds.get("max_per_class")
    classes = len(ds.get("class_names") or [])
    if cap and classes:
        n = min(n, cap * classes) if n else cap * classes
    n = n or 1000  # unknown until ingested: a guess the table marks
    split = ds.get("split", {})
    test, val = split.get("test", 0.2), split.get("val", 0.1)
    return {"test": round(n * test), "val": round(n * val), "train": round(n * (1 - test - val))}


def pass_key(model_cfg: dict, n_classes: int, device: str, threads: int) -> str:
    """What sets a model's cost per pass: the cache's key."""
    return json.dumps([str(model_cfg.get("arch", "")), model_cfg.get("arch_options") or {},
                       int(model_cfg.get("input_size", 224)), n_classes, device, threads], sort_keys=True)


_READ: dict[str, tuple] = {}  # cache file -> (its mtime, its content): read once per change, not once per job


def read_cache(cache: str | Path | None) -> dict:
    """The cached per-pass timings (a JSON file), read once per change of the file."""
    if not cache or not Path(cache).exists():
        return {}
    mtime = Path(cache).stat().st_mtime_ns
    if _READ.get(str(cache), (None,))[0] != mtime:
        try:
            _READ[str(cache)] = (mtime, json.loads(Path(cache).read_text()))
        except (OSError, ValueError):  # a cache cut short: time the model again
            return {}
    return _READ[str(cache)][1]


def pass_seconds(model_cfg: dict, n_classes: int, device: str = "cpu", threads: int = 2,
                 cache: str | Path | None = None, measure: bool = True) -> tuple[float, bool]:
    """Seconds per image for one forward pass of this architecture at its input size (batched), measured
    by timed batches of the model with random weights; cached by what sets it. Returns (seconds, measured).
    measure=False never times a model: uncached, it returns UNMEASURED_PASS per pixel (a cautious guess)."""
    size = int(model_cfg.get("input_size", 224))
    arch = str(model_cfg.get("arch", ""))
    key = pass_key(model_cfg, n_classes, device, threads)
    store = dict(read_cache(cache))
    if key in store:
        return store[key], True
    if not measure:
        return UNMEASURED_PASS * size * size, False
    if arch.startswith("python:") or arch == "ensemble":  # user code is not run to plan; a mid-sized CNN's cost
        return 2.5e-7 * size * size, False
    import torch

    from cvaudit.net.models import auto_batch, build_model
    torch.set_num_threads(threads)
    try:
        net = build_model({"arch": arch, "arch_options": model_cfg.get("arch_options") or {}, "weights": "none",
                           "input_size": size, "num_classes": n_classes}).eval()
    except Exception:  # the job that builds it says why; planning goes on
        return 2.5e-7 * size * size, False
    batch = min(32, auto_batch(size, size, device))
    x = torch.rand(batch, 3, size, size)
    held = [0]  # the memory side of the cost: every layer's output for one image, in values (resources.job_mem_mb)
    hooks = [m.register_forward_hook(lambda _m, _i, o: held.__setitem__(0, held[0] + (o.numel() if torch.is_tensor(o)
                                                                                       else 0)))
             for m in net.modules() if not any(True for _ in m.children())]
    with torch.no_grad():
        net(x)  # warm-up
        for h in hooks:
            h.remove()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[1] / batch
    if cache:
        store[key] = sec
        store["activations " + key] = held[0] / batch
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{cache}.{os.getpid()}")
        tmp.write_text(json.dumps(store))
        tmp.replace(cache)
    return sec, True


def _method_passes(name: str, options: dict, size: int) -> float:
    from cvaudit.explain.methods import get_method
    m = get_method(name, batch_size=1, **options)
    p = m.model_passes(size, size)
    return p * (GRADIENT if m.kind in ("gradient", "cam") else 1.0)


def model_jobs(config: dict, model: str, counts: dict) -> list[tuple[str, float, float]]:
    """(stage, model passes, seconds of other work) per job of one model's audit."""
    cfg, ex, rob = config["models"][model], config["explain"], config["robustness"]
    size = int(cfg.get("input_size", 224))
    pix = size * size / (28 * 28)
    n_te, n_tr, n_va = counts["test"], counts["train"], counts["val"]
    classes = len(config["datasets"][cfg["dataset"]].get("class_names") or []) or 10
    jobs = []
    tr = cfg.get("train")
    if trained_here(config, model):
        epochs = tr.get("head_epochs", 3) + tr.get("finetune_epochs", 3)
        jobs.append(("train", epochs * (TRAINING * n_tr + n_va), 0.0))
    jobs.append(("evaluate", n_te + n_va + n_tr, 0.0))
    a = min(config["audit"]["max_images"], config["audit"]["per_class"] * classes, n_te)
    trust = ex["trust"]
    road = trust["road"]
    per_image_trust = 2 * trust["steps"] + (len(road["percentiles"]) * 2 * road["imputations"] if road["enabled"] else 0)
    road_cpu = (len(road["percentiles"]) * road["imputations"] * PER_IMAGE_CPU["road"] * pix) if road["enabled"] else 0
    for m in ex["methods"] + ["random"]:
        try:
            mp = _method_passes(m, ex.get(m, {}), size)
        except Exception:  # a method this architecture cannot run: its job says so quickly
            continue
        checks = trust["sanity_images"] * (trust["sanity_stages"] + 1 + trust["sensitivity_samples"])
        jobs.append((f"explain {m}", a * (mp * 1.2 + per_image_trust) + checks * mp, a * road_cpu))
    if stage_on(config, model, "clever_hans"):
        ch = config["clever_hans"]
        n = min(ch["max_images"], n_te) + min(ch["train_images"], n_tr)
        # maps (LRP's composite costs about two gradients), SpRAy, the paste and control tests, the global search
        jobs.append(("clever_hans", 3 * (n * (GRADIENT + 1) + 4 * ch["paste_images"] * 3), 0.0))
    if stage_on(config, model, "tcav"):
        t = ex["tcav"]
        fits = (len(config["concepts"]) + 1) * t["random_sets"]  # a logistic regression per CAV, about 0.1 s each
        passes = (t["random_sets"] + 1) * t["images"] + len(config["concepts"]) * t["images"] \
            + GRADIENT * classes * min(t["class_images"], n_te)
        jobs.append(("tcav", passes, 0.1 * fits))
    rep = config["represent"]
    if stage_on(config, model, "method_agreement"):
        jobs.append(("method_agreement", 0.0, 0.0))
    if stage_on(config, model, "represent"):
        jobs.append(("represent", 3 * (n_te + n_tr), 0.0))  # embeddings, and the images loaded to make them
    if stage_on(config, model, "embedding_duplicates"):
        jobs.append(("embedding_duplicates", 3 * (n_te + n_tr), 0.0))
    if stage_on(config, model, "inspect_units"):
        if stage_on(config, model, "visualise_ascent"):
            jobs.append(("visualise_ascent", rep["ascent"]["steps"] * GRADIENT * (rep["ascent"]["classes"]
                                                                                  + rep["ascent"]["channels"]), 0.0))
        if stage_on(config, model, "layer_views"):
            lv = rep["layer_views"]
            jobs.append(("layer_views", GRADIENT * (lv["inversion"]["images"] * lv["inversion"]["steps"] * 2
                                                    + lv["erf"]["images"] * 2), 0.0))
        jobs.append(("inspect_units", 2 * n_te, 0.0))
    if stage_on(config, model, "invariance"):
        n_rob = min(rob["max_images"], n_te)
        for family, values in rob["invariance"].items():
            jobs.append((f"invariance {family}", n_rob * len(values), n_rob * len(values) * PER_IMAGE_CPU["transform"] * pix))
        adv = rob["adversarial"]
        if stage_on(config, model, "adversarial"):
            n_adv, eps = min(adv["max_images"], n_te), len(adv["epsilons"])
            aa = adv["autoattack"]
            cost = {"fgsm": GRADIENT + 1, "square": aa["square_queries"],
                    "pgd": adv["pgd"]["steps"] * adv["pgd"]["restarts"] * GRADIENT,
                    "autoattack": aa["restarts"] * (aa["steps"] * (1 + aa["target_classes"]) * GRADIENT
                                                    + aa["square_queries"])}
            for attack in attacks_for(config, model):
                jobs.append((f"adversarial {attack}", EARLY_STOP * n_adv * eps * cost.get(attack, GRADIENT)
                             + n_adv * adv["masking"]["more_steps"] * GRADIENT, 0.0))
        c = rob["corruptions"]
        if stage_on(config, model, "corruptions"):
            k = len(c["corruptions"]) * len(c["severities"])
            n_c = min(c["max_images"], n_te)
            jobs.append(("corruptions", n_c * k, n_c * k * (0.003 + PER_IMAGE_CPU["corruptions"] * pix)))
        st = rob["shape_texture"]
        if stage_on(config, model, "shape_texture"):
            n_st = min(st["max_images"], n_te) * (len(st["grids"]) + 2)
            jobs.append(("shape_texture", n_st, n_st * PER_IMAGE_CPU["cue_conflict"] * pix))
        if stage_on(config, model, "calibrate"):
            jobs.append(("calibrate", n_va + n_te, 0.0))
        for shifted in cfg.get("shift_sets", []) if stage_on(config, model, "shift") else []:
            jobs.append((f"shift {shifted}", min(rob["shift"]["max_images"], sum(dataset_counts(config, shifted).values())),
                         0.0))
        if cfg.get("shift_sets") and stage_on(config, model, "shift") and rob["shift"]["ood"]["enabled"]:
            # the out-of-distribution scores' reference (training images) and own test images
            jobs.append(("shift ood", min(rob["shift"]["ood"]["reference"], n_tr) + min(rob["shift"]["max_images"], n_te),
                         0.0))
        if stage_on(config, model, "shuffled_labels"):
            sl = rob["shuffled_labels"]
            jobs.append(("shuffled_labels", sl["epochs"] * GRADIENT * min(sl["max_images"], n_tr), 0.0))
        if stage_on(config, model, "slices"):
            jobs.append(("slices", 0.0, START_LIGHT - START_UP))
    jobs.append(("report", 0.0, REPORT_SECONDS))
    return jobs


# Rules whose estimate row has another name (the rest: the rule's name, less a shard suffix)
RULE_STAGE = {"train_model": "train", "evaluate_model": "evaluate", "ingest_dataset": "ingest", "plant_cue": "ingest",
              "data_audit": "data", "render_report": "report", "compare_models": "compare",
              "explain_model": "explain", "invariance_model": "invariance", "adversarial_model": "adversarial"}


def row_is_run_by(row: dict, todo: list[tuple[str, dict]]) -> bool:
    """Whether a job of the plan (rule, wildcards) does the work of this estimate row."""
    family, _, sub = row["stage"].partition(" ")
    for rule, wc in todo:
        stage = RULE_STAGE.get(rule, rule.removesuffix("_part").removesuffix("_merge").removesuffix("_shard"))
        key = wc.get("model") or wc.get("dataset") or "all"
        part = wc.get("method") or wc.get("attack") or wc.get("family")
        if stage == family and key == row["model"] and (not part or not sub or part == sub):
            return True
    return False


def estimate(config: dict, device: str = "cpu", cores: int = 2, cache: str | Path | None = None,
             results: str | Path = "results", todo: list[tuple[str, dict]] | None = None,
             measure: bool = True) -> dict:
    """Per model and stage the expected seconds, the total and the wall time on `cores` cores; with `todo`
    (the jobs a plan will run: rule and wildcards) only the work of those jobs; measure=False times no model
    (pass_seconds)."""
    threads = int(config.get("threads", 1))
    rows, total = [], 0.0
    per_dataset = {}
    for d in {m["dataset"] for m in config["models"].values()}:
        counts = dataset_counts(config, d, results)
        per_dataset[d] = counts
        if config["data_audit"]["enabled"]:
            n = sum(counts.values())
            rows.append({"model": d, "stage": "data audit", "seconds": START_UP + n * PER_IMAGE_CPU["data_audit"]})
        rows.append({"model": d, "stage": "ingest", "seconds": START_LIGHT + sum(counts.values()) * 0.001})
        rows.append({"model": d, "stage": "fit_baseline", "seconds": START_UP})
        if any(stage_on(config, m, "image_properties") for m, c in config["models"].items() if c["dataset"] == d):
            rows.append({"model": d, "stage": "image_properties", "seconds": START_LIGHT})
    for name, cfg in config["models"].items():
        counts = per_dataset[cfg["dataset"]]
        classes = len(config["datasets"][cfg["dataset"]].get("class_names") or []) or 10
        sec, _ = pass_seconds(cfg, classes, device, threads, cache, measure)
        started = set()  # the per-image stages run as one job for this model (split_jobs false): started once
        for stage, passes, other in model_jobs(config, name, counts):
            family = stage.split(" ")[0]
            start = ITEM_START if family in started else START_UP
            if family in ("explain", "invariance", "adversarial") and one_job(config, family, name):
                started.add(family)
            rows.append({"model": name, "stage": stage, "seconds": start + passes * sec + other})
    for d in per_dataset:  # a dataset two or more models share: the same images explained by each, and their CKA
        if sum(m["dataset"] == d for m in config["models"].values()) > 1:
            rows.append({"model": d, "stage": "side_by_side", "seconds": 3 * START_UP})
            if config["represent"]["enabled"]:
                rows.append({"model": d, "stage": "compare_representations", "seconds": START_UP})
    rows.append({"model": "all", "stage": "compare", "seconds": START_LIGHT})  # the comparison reads summaries only
    if todo is not None:
        rows = [r for r in rows if row_is_run_by(r, todo)]
    total = sum(r["seconds"] for r in rows)
    longest = max((r["seconds"] for r in rows), default=0.0)
    wall = max(total / max(1, cores), longest)  # jobs fill the cores; no run is shorter than its longest job
    return {"rows": rows, "job_seconds": total, "wall_seconds": wall, "cores": cores, "device": device}


def table(est: dict, top: int = 8, scope: str = "") -> str:
    """The lines a run starts with: the total, and the stages that cost most."""
    from cvaudit.core.progress import duration
    if not est["rows"]:
        return ""
    by_stage: dict[str, float] = {}
    by_model: dict[str, float] = {}
    for r in est["rows"]:
        family = r["stage"].split(" ")[0]
        by_stage[family] = by_stage.get(family, 0.0) + r["seconds"]
        by_model[r["model"]] = by_model.get(r["model"], 0.0) + r["seconds"]
    lines = [f"cvaudit: estimated run time{scope} about {duration(est['wall_seconds'])} on {est['cores']} core(s), "
             f"{est['device'].upper()} ({duration(est['job_seconds'])} of job time; an estimate, within about 2x):"]
    lines += [f"  {s:<18} {duration(v):>14}" for s, v in sorted(by_stage.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  per model: " + ", ".join(f"{m} {duration(v)}" for m, v in by_model.items()))
    return "\n".join(lines)


def over_an_hour(est: dict, preset: str) -> str | None:
    if est["wall_seconds"] <= 3600 or preset == "quick":
        return None
    return ("cvaudit: that is over an hour; audit.preset: quick fits a CPU laptop (config/presets.yaml), or lower the "
            "stages at the top of the table")


def cores_of(workflow_cores) -> int:
    try:
        return max(1, int(workflow_cores))
    except (TypeError, ValueError):
        return os.cpu_count() or 1


def device_of(config: dict) -> str:
    if config.get("device") in ("cpu", "cuda"):
        return config["device"]
    return "cuda" if Path("/dev/nvidiactl").exists() else "cpu"



def announce(config: dict, cores, todo: list[tuple[str, dict]] | None = None) -> str:
    """What a run or a plan prints before any job: the estimate of the jobs `todo` (None: the whole audit from
    scratch), and what to do when that is over an hour. Pass costs are cached under .snakemake/cvaudit/."""
    try:
        est = estimate(config, device_of(config), cores_of(cores), cache=".snakemake/cvaudit/pass_seconds.json",
                       todo=todo)
    except Exception as e:  # an estimate never stops a run; say why there is none
        return f"cvaudit: no run-time estimate ({type(e).__name__}: {e})"
    lines = [table(est, scope=" of the whole audit from scratch" if todo is None else "")]
    lines.append(over_an_hour(est, config["audit"]["preset"]) or "")
    return "\n".join(x for x in lines if x)
