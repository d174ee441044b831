"""Sharding (config key shard_size): the explain, invariance and adversarial stages split into jobs of a
few images each and merged give exactly what one job gives, and what one job per model for all of a stage's
methods, families or attacks (split_jobs false, the session's run) gives."""
import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import smk

pytestmark = pytest.mark.e2e


def same_npz(a, b):
    from cvaudit.core.files import load_npz
    x, y = load_npz(a), load_npz(b)
    mx, my = x.pop("meta"), y.pop("meta")
    for k in ("seconds", "attribution_seconds", "shards", "batch_size"):
        mx.pop(k, None)
        my.pop(k, None)
    assert mx == my
    assert set(x) == set(y)
    for k in x:
        assert x[k].shape == y[k].shape, k
        if x[k].dtype.kind == "f":  # maps equal up to float rounding of different batch sizes
            assert np.allclose(x[k], y[k], atol=1e-6, equal_nan=True), k
        else:
            assert np.array_equal(x[k], y[k]), k


def whole_and_merged(stage, item, job, tmp_path, suffix, n_shards, size):
    """The stage in one job, and the same stage as n_shards shards of `size` merged (cvaudit.core.shards)."""
    from cvaudit.core.shards import run_shard, run_stage
    whole, merged = tmp_path / f"{item}{suffix}", tmp_path / f"{item}.merged{suffix}"
    run_stage(stage, item, job, whole)
    parts = [tmp_path / f"{item}.{i}.npz" for i in range(n_shards)]
    for i, p in enumerate(parts):
        run_shard(stage, item, job, shard=i, shard_size=size, out=p)
    run_stage(stage, item, {**job, "model": None, "data": None} if stage != "invariance" else job, merged,
              parts=parts)  # a merge reads its parts alone (invariance: the drift reads the model)
    return whole, merged


@pytest.mark.parametrize("model", ["cnn_tiny", "lite0_tiny"])
def test_merged_shards_equal_one_job(run, tmp_path, model):
    from cvaudit.core.files import load_npz
    from cvaudit.core.registry import attack_options
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    from cvaudit.config import validate_config

    from conftest import REPO
    cfg = validate_config(cfg, REPO / "config" / "schema.yaml")
    res = run / "results" / model
    manifest = run / "results" / "data" / "tiny" / "manifest.csv"
    common = dict(model=res / "model.safetensors", seed=cfg["seed"], device="cpu", threads=1)
    size = 4  # 6 audit images -> 2 shards (4 + 2); 12 robustness images -> 3; 8 attacked -> 2 ...
    # every kind of method and attack on the CNN; on EfficientNet-Lite0 (batch norm, a deeper net) one gradient,
    # one CAM and one perturbation method, one invariance family and one attack
    methods = ("random", "saliency", "gradcam", "occlusion", "lime", "deeplift_shap", "kernel_shap")
    for method in methods if model == "cnn_tiny" else ("saliency", "gradcam", "lime"):
        job = {**common, "data": res / "eval" / "audit_set.npz", "options": cfg["explain"].get(method, {}),
               "trust": cfg["explain"]["trust"]}
        # ... and one empty shard at the end
        same_npz(*whole_and_merged("explain", method, job, tmp_path, ".npz", 3, size))
    for family in ("noise", "rotate") if model == "cnn_tiny" else ("rotate",):
        job = {**common, "data": manifest, "drift": cfg["robustness"]["drift"],
               "options": {"max_images": cfg["robustness"]["max_images"],
                           "severities": cfg["robustness"]["invariance"][family]}}
        a, b = (json.loads(p.read_text()) for p in whole_and_merged("invariance", family, job, tmp_path, ".json", 4,
                                                                    size))  # the last shard is empty
        for r in (a, b):
            r.pop("seconds"), r.pop("shards")
        assert a == b and a["n"] == 12
    for attack in ("fgsm", "pgd", "autoattack") if model == "cnn_tiny" else ("pgd",):
        job = {**common, "data": manifest, "options": attack_options(cfg["robustness"]["adversarial"], attack)}
        whole, merged = whole_and_merged("adversarial", attack, job, tmp_path, ".npz", 3, size)  # one empty
        if attack == "fgsm":  # deterministic: bit for bit
            same_npz(whole, merged)
        else:  # random starts are seeded per batch: shards of 4 are other draws of the same attack
            a, b = load_npz(whole), load_npz(merged)
            assert np.array_equal(a["targets"], b["targets"]) and np.array_equal(a["clean_pred"], b["clean_pred"])
            n = len(a["targets"])
            assert all(abs(x - y) * n <= 1 + 1e-9 for x, y in zip(a["meta"]["accuracy"], b["meta"]["accuracy"]))


def test_the_workflow_runs_shards_as_jobs_and_merges_them(run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(run, work, symlinks=True)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg.update(shard_size=4, split_jobs=True)  # the session's run computed each stage of a model in one job
    (work / "sharded.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/cnn_tiny/explain/lime/maps.npz", "results/cnn_tiny/robust/invariance/noise.json",
               "results/cnn_tiny/robust/adversarial/fgsm.npz"]
    before = {t: (work / t).read_bytes() for t in targets}
    p = smk(work, *targets, "--configfile", str(work / "sharded.yaml"))
    out = p.stdout + p.stderr
    for rule, n in (("explain_shard", 2), ("invariance_shard", 3), ("adversarial_shard", 2)):
        assert out.count(f"rule {rule}:") == n, (rule, out[-2000:])
    assert len(list((work / "results/cnn_tiny/explain/lime/shards").glob("*.npz"))) == 2
    for t in targets:
        if t.endswith(".json"):
            a, b = json.loads(before[t]), json.loads((work / t).read_text())
            for r in (a, b):
                r.pop("seconds"), r.pop("shards", None)
            assert a == b
        else:
            (tmp_path / "before.npz").write_bytes(before[t])
            same_npz(tmp_path / "before.npz", work / t)


def test_streamed_chunks_equal_one_chunk(run, tmp_path, monkeypatch):
    """Within a job the explain stage streams the audit set in chunks (explain.CHUNK_IMAGES): chunks of 4
    images (6 audit images: 4 + 2, the sanity check in the first) give what one chunk gives, including the
    per-image records that integrated gradients and LIME keep."""
    from cvaudit.config import validate_config
    from cvaudit.core.shards import run_stage
    from cvaudit.explain import explain

    from conftest import REPO
    cfg = validate_config(yaml.safe_load((run / "config.yaml").read_text()), REPO / "config" / "schema.yaml")
    res = run / "results" / "cnn_tiny"
    for method in ("integrated_gradients", "lime", "gradcam"):
        job = dict(model=res / "model.safetensors", seed=cfg["seed"], device="cpu", threads=1,
                   data=res / "eval" / "audit_set.npz", options=cfg["explain"].get(method, {}),
                   trust=cfg["explain"]["trust"])
        run_stage("explain", method, job, tmp_path / f"{method}.one.npz")
        monkeypatch.setattr(explain, "CHUNK_IMAGES", 4)
        run_stage("explain", method, job, tmp_path / f"{method}.chunked.npz")
        monkeypatch.setattr(explain, "CHUNK_IMAGES", 64)
        same_npz(tmp_path / f"{method}.one.npz", tmp_path / f"{method}.chunked.npz")


def test_streamed_robustness_chunks_equal_one_chunk(run, tmp_path, monkeypatch):
    """The invariance and adversarial stages stream their sample in chunks of CHUNK_BATCHES model batches:
    with batches of 4 images, chunks of one batch (12 images: 3 chunks; 8 attacked: 2) give what one chunk
    gives, bit for bit (each batch keeps its seed), including autoattack's per-component hits and masking
    extras and the example candidates picked across chunks."""
    from cvaudit.config import validate_config
    from cvaudit.core.registry import attack_options
    from cvaudit.core.shards import run_stage
    from cvaudit.net import models
    from cvaudit.robust import adversarial, invariance

    from conftest import REPO
    cfg = validate_config(yaml.safe_load((run / "config.yaml").read_text()), REPO / "config" / "schema.yaml")
    res = run / "results" / "cnn_tiny"
    manifest = run / "results" / "data" / "tiny" / "manifest.csv"
    common = dict(model=res / "model.safetensors", seed=cfg["seed"], device="cpu", threads=1, data=manifest)
    monkeypatch.setattr(models, "CPU_BATCH_PIXELS", 4 * 28 * 28)
    for family in ("noise", "rotate"):
        job = {**common, "drift": cfg["robustness"]["drift"],
               "options": {"max_images": cfg["robustness"]["max_images"],
                           "severities": cfg["robustness"]["invariance"][family]}}
        out = []
        for chunk in (8, 1):
            monkeypatch.setattr(invariance, "CHUNK_BATCHES", chunk)
            run_stage("invariance", family, job, tmp_path / f"{family}.{chunk}.json")
            r = json.loads((tmp_path / f"{family}.{chunk}.json").read_text())
            r.pop("seconds")
            out.append(r)
        assert out[0] == out[1] and out[0]["n"] == 12
    for attack in ("fgsm", "pgd", "autoattack"):
        job = {**common, "options": attack_options(cfg["robustness"]["adversarial"], attack)}
        for chunk in (8, 1):
            monkeypatch.setattr(adversarial, "CHUNK_BATCHES", chunk)
            run_stage("adversarial", attack, job, tmp_path / f"{attack}.{chunk}.npz")
        same_npz(tmp_path / f"{attack}.8.npz", tmp_path / f"{attack}.1.npz")
