"""Sharding (config key shard_size): the explain, invariance and adversarial stages split into jobs of a
few images each and merged give exactly what one job gives."""
import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import smk

pytestmark = pytest.mark.e2e


def same_npz(a, b):
    from cvaudit.io import load_npz
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


@pytest.mark.parametrize("model", ["cnn_tiny", "lite0_tiny"])
def test_merged_shards_equal_one_job(run, tmp_path, model):
    from cvaudit.explain import run_explain, run_explain_shard
    from cvaudit.adversarial import run_adversarial, run_adversarial_shard
    from cvaudit.io import load_npz
    from cvaudit.invariance import run_invariance, run_invariance_shard
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    from cvaudit.config import validate_config
    from conftest import REPO
    cfg = validate_config(cfg, REPO / "config" / "schema.yaml")
    res = run / "results" / model
    manifest = run / "results" / "data" / "tiny" / "manifest.csv"
    common = dict(seed=cfg["seed"], device="cpu", threads=1)
    size = 4  # 6 audit images -> 2 shards (4 + 2); 12 robustness images -> 3; 8 attacked -> 2 ...
    for method in ("random", "saliency", "gradcam", "occlusion", "lime"):
        opts, trust = cfg["explain"].get(method, {}), cfg["explain"]["trust"]
        whole = tmp_path / f"{method}.npz"
        run_explain(method, res / "model.safetensors", res / "eval" / "audit_set.npz", opts, trust, out_maps=whole,
                    **common)
        parts = [tmp_path / f"{method}.{i}.npz" for i in range(3)]  # ... and one empty shard at the end
        for i, p in enumerate(parts):
            run_explain_shard(method, res / "model.safetensors", res / "eval" / "audit_set.npz", opts, trust,
                              shard=i, shard_size=size, out=p, **common)
        merged = tmp_path / f"{method}.merged.npz"
        run_explain(method, None, None, opts, trust, out_maps=merged, parts=parts, **common)
        same_npz(whole, merged)
    for family in ("noise", "rotate"):
        opts = {"max_images": cfg["robustness"]["max_images"], "severities": cfg["robustness"]["invariance"][family]}
        whole, merged = tmp_path / f"{family}.json", tmp_path / f"{family}.merged.json"
        run_invariance(family, res / "model.safetensors", manifest, opts, cfg["robustness"]["drift"], out=whole,
                       **common)
        parts = [tmp_path / f"{family}.{i}.npz" for i in range(3)]
        for i, p in enumerate(parts):
            run_invariance_shard(family, res / "model.safetensors", manifest, opts, shard=i, shard_size=size, out=p,
                                 **common)
        run_invariance(family, res / "model.safetensors", manifest, opts, cfg["robustness"]["drift"], out=merged,
                       parts=parts, **common)
        a, b = (json.loads(p.read_text()) for p in (whole, merged))
        for r in (a, b):
            r.pop("seconds"), r.pop("shards")
        assert a == b and a["n"] == 12
    opts = {k: v for k, v in cfg["robustness"]["adversarial"].items() if k not in ("enabled", "attacks")}
    for attack in ("fgsm", "pgd", "autoattack"):
        whole, merged = tmp_path / f"{attack}.npz", tmp_path / f"{attack}.merged.npz"
        run_adversarial(attack, res / "model.safetensors", manifest, opts, out=whole, **common)
        parts = [tmp_path / f"{attack}.{i}.npz" for i in range(2)]
        for i, p in enumerate(parts):
            run_adversarial_shard(attack, res / "model.safetensors", manifest, opts, shard=i, shard_size=size, out=p,
                                  **common)
        run_adversarial(attack, None, None, opts, out=merged, parts=parts, **common)
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
    cfg["shard_size"] = 4
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
