"""TCAV against known answers: a network set by hand to read a red corner mark (its `mark` channel, fed to class
2's logit or not) beside green stripes (two pattern channels, one per other class). The mark concept drives the
class the mark feeds and no other, not at all in the clean twin; a concept of something the layer cannot see is
not separable; and captum's TCAV (its own linear classifier and hooks) gives the same scores."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cvaudit.explain.tcav import concept_test, fit_cav, layer_values, tcav

from conftest import FMNIST

S = 32
CLASSES = ["h", "v", "plain"]
SPEC = {"input_size": S, "class_names": CLASSES, "mean": [0.0] * 3, "std": [1.0] * 3}
OPTIONS = {"layer": "features", "random_sets": 10, "images": 20, "class_images": 20, "alpha": 0.05,
           "min_cav_accuracy": 0.7, "examples": 4}


class MarkNet(nn.Module):
    """features: a 1 x 1 red detector (fires where red is above 0.5: the mark) and horizontal and vertical edge
    detectors on the green channel (the stripes); the head reads their spatial means: class h the horizontal
    edges, class v the vertical ones, class plain a bias and `mark_weight` times the mark channel."""

    def __init__(self, mark_weight: float):
        super().__init__()
        conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, 1, 1] = 10.0
            conv.bias[0] = -5.0
            conv.weight[1, 1] = torch.tensor([[1.0, 1, 1], [0, 0, 0], [-1, -1, -1]])
            conv.weight[2, 1] = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]])
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 8, 0], [0, 0, 8], [mark_weight, 0, 0]]))
            self.head.bias.copy_(torch.tensor([0.0, 0, 0.5]))

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def _image(kind: str, rng, mark: bool = False) -> np.ndarray:
    x = np.zeros((S, S, 3), np.float32)
    x[..., 1] = 0.05 + 0.05 * rng.random((S, S))
    i = np.arange(20)
    stripes = ((i // 2) % 2).astype(np.float32) * (0.5 + 0.3 * rng.random())
    if kind == "h":
        x[6:26, 6:26, 1] += stripes[:, None]
    elif kind == "v":
        x[6:26, 6:26, 1] += stripes[None, :]
    if mark:
        x[1:5, 1:5, 0] = 1.0
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _world(tmp_path, n=30, seed=0):
    """Training images (80% of class plain's with the mark), test images without it, and the concept folders:
    the mark on ordinary images of every class, and training images tinted blue (a channel the network does not
    read)."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "test": []}
    for split in rows:
        for c in CLASSES:
            for i in range(n):
                p = tmp_path / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_image(c, rng, mark=split == "train" and c == "plain" and i < 0.8 * n)).save(p)
                rows[split].append({"path": str(p), "label": c})
    (tmp_path / "mark").mkdir()
    (tmp_path / "blue").mkdir()
    for i in range(24):
        Image.fromarray(_image(CLASSES[i % 3], rng, mark=True)).save(tmp_path / "mark" / f"{i}.png")
        img = np.asarray(Image.open(rows["train"][int(rng.integers(len(rows["train"])))]["path"])).copy()
        img[..., 2] = 200
        Image.fromarray(img).save(tmp_path / "blue" / f"{i}.png")
    concepts = {"mark": {"path": str(tmp_path / "mark"), "forbidden": True},
                "blue": {"path": str(tmp_path / "blue"), "forbidden": False}}
    return rows, concepts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("tcav"))


def _by_class(result, concept):
    return {r["class"]: r for r in result["concepts"][concept]["classes"]}


@pytest.mark.slow
def test_the_mark_concept_drives_the_class_the_mark_feeds_and_its_images_turn_into_it(world):
    from cvaudit.report.concept_sections import concepts_section, concepts_summary, forbidden_concept
    from cvaudit.report.judge import judge
    rows, concepts = world
    t = {"warn": 0.1, "fail": 0.3}
    net = MarkNet(mark_weight=200.0).eval()
    x = torch.tensor(np.stack([np.asarray(Image.open(r["path"])) for r in rows["test"]]), dtype=torch.float32)
    assert (net(x.permute(0, 3, 1, 2) / 255).argmax(1).numpy() == [CLASSES.index(r["label"]) for r in rows["test"]]).all()
    res = tcav(net, SPEC, {"mark": concepts["mark"]}, rows["train"], rows["test"], OPTIONS, seed=0, device="cpu")
    assert res["layer"] == "features" and res["n_tests"] == 3 and res["n_reference"] == 60
    mark = res["concepts"]["mark"]
    assert mark["separable"] and mark["cav_accuracy"]["mean"] >= 0.85  # a quarter of the random images carry it too
    assert mark["predicted"] == {"h": 0, "v": 0, "plain": 24}  # the mark turns every garment into "plain"
    got = _by_class(res, "mark")
    assert got["plain"]["mean"] == 1.0 and got["plain"]["drives"] and got["plain"]["p_adjusted"] < 0.01
    d = got["plain"]["difference"]
    assert d["ci_low"] > 0.2 and d["n"] == 20 and d["method"] == "welch t"
    shift = got["plain"]["shift"]
    assert shift["value"] == pytest.approx(1 - 20 / 60) and shift["ci_low"] > 0.4 and got["plain"]["confirmed"]
    assert not got["h"]["confirmed"] and not got["v"]["confirmed"]  # what the stripes' directions say, no behaviour
    assert 0.2 < res["random"]["cav_accuracy"] < 0.8  # random sets against random sets: no direction to learn
    section = concepts_section({"results": _write(res, world)})
    est = forbidden_concept({"built": {"concepts": section}})
    assert est["value"] == shift["value"] and "mark on plain: 24 of 24 concept images" in est["note"]
    assert judge(est, t, False) == "fail"
    summary = concepts_summary(section)
    assert summary["layer"] == "features" and summary["random_sets"] == 10
    entry = summary["concepts"]["mark"]
    assert entry["forbidden"] and entry["separable"] and entry["confirmed"] == ["plain"] and "plain" in entry["drives"]
    assert entry["cav_accuracy"] == mark["cav_accuracy"]["mean"] and set(entry["scores"]) == set(CLASSES)
    assert entry["scores"]["plain"] == {"tcav": 1.0, "random": got["plain"]["random_mean"],
                                        "p_adjusted": got["plain"]["p_adjusted"], "shift": shift["value"]}
    assert section["concepts"][0]["classes"][0]["class"] == "plain"  # the largest rise over random first
    assert len(section["concepts"][0]["examples"]) == OPTIONS["examples"] and section["n_reference"] == 60
    assert concepts_summary(None) is None and concepts_section({}) is None
    # the clean twin: the same layer sees the mark (separable), but no class's logit moves with it
    clean = tcav(MarkNet(mark_weight=0.0).eval(), SPEC, {"mark": concepts["mark"]}, rows["train"], rows["test"],
                 OPTIONS, seed=0, device="cpu")
    assert clean["concepts"]["mark"]["separable"] and not _by_class(clean, "mark")["plain"]["drives"]
    assert clean["concepts"]["mark"]["predicted"] == {"h": 8, "v": 8, "plain": 8}
    assert not any(r["confirmed"] for r in clean["concepts"]["mark"]["classes"])
    est = forbidden_concept({"built": {"concepts": concepts_section({"results": _write(clean, world)})}})
    assert abs(est["value"]) < 0.05 and judge(est, t, False) != "fail", est  # 24 images leave it undecided
    # a mark that lowers the class: significant, the other way, never "drives"
    against = _by_class(tcav(MarkNet(mark_weight=-200.0).eval(), SPEC, {"mark": concepts["mark"]}, rows["train"],
                             rows["test"], OPTIONS, seed=0, device="cpu"), "mark")
    assert against["plain"]["mean"] == 0.0 and against["plain"]["significant"] and not against["plain"]["drives"]


def _write(result, world):
    import json
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=Path(world[1]["mark"]["path"]).parent)
    json.dump(result, f)
    f.close()
    return f.name


@pytest.mark.slow
def test_a_concept_the_layer_cannot_see_is_not_read(world):
    rows, concepts = world
    res = tcav(MarkNet(mark_weight=200.0).eval(), SPEC, {"blue": concepts["blue"]}, rows["train"], rows["test"],
               OPTIONS, seed=0, device="cpu")
    blue = res["concepts"]["blue"]
    assert not blue["separable"] and blue["classes"] == [] and "not represented at features" in blue["reason"]
    assert res["n_tests"] == 0


def test_the_cav_is_the_logistic_regressions_normal_and_its_accuracy_is_held_out():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (30, 5)), rng.normal(0, 1, (30, 5))
    a[:, 2] += 3  # the concept differs along dimension 2 alone
    cav, acc = fit_cav(a, b, seed=0)
    assert np.linalg.norm(cav) == pytest.approx(1.0) and np.argmax(np.abs(cav)) == 2 and cav[2] > 0.9
    assert acc >= 0.9
    from sklearn.model_selection import train_test_split
    x, y = np.r_[a, b], np.r_[np.ones(30), np.zeros(30)]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1 / 3, stratify=y, random_state=0)
    ref = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    assert np.allclose(cav, ref.coef_[0] / np.linalg.norm(ref.coef_[0])) and acc == ref.score(x_te, y_te)
    w = LogisticRegression(max_iter=2000).fit(x, y).coef_[0]
    assert float(cav @ (w / np.linalg.norm(w))) > 0.9  # the held-out third moves it little
    _, chance = fit_cav(rng.normal(0, 1, (30, 5)), rng.normal(0, 1, (30, 5)), seed=0)
    assert chance < 0.8


def test_the_test_is_welchs_and_its_interval_is_bonferroni_corrected():
    from scipy.stats import ttest_ind
    c, r = [0.9, 1.0, 0.8, 1.0, 0.95], [0.4, 0.6, 0.5, 0.3, 0.7]
    one, many = concept_test(c, r, 1, 0.05), concept_test(c, r, 10, 0.05)
    assert one["p"] == pytest.approx(ttest_ind(c, r, equal_var=False).pvalue)
    assert one["difference"][0] == pytest.approx(np.mean(c) - np.mean(r))
    assert many["difference"][1] < one["difference"][1] < one["difference"][0] < one["difference"][2] < many["difference"][2]
    assert concept_test([1.0] * 5, [1.0] * 5, 3, 0.05)["p"] == 1.0 and concept_test([1.0] * 5, [0.0] * 5, 3, 0.05)["p"] == 0.0


@pytest.mark.slow
def test_captums_tcav_gives_the_same_scores(world, tmp_path):
    """captum.concept.TCAV (its own SGD classifier, activations cached on disk) on the same layer, concept and
    random sets: the mark's score for the class it feeds is 1 in ours and at least 0.75 in captum's."""
    from captum.concept import TCAV, Concept
    rows, concepts = world
    net = MarkNet(mark_weight=200.0).eval()
    opts = {**OPTIONS, "random_sets": 4}
    ours = tcav(net, SPEC, {"mark": concepts["mark"]}, rows["train"], rows["test"], opts, seed=0, device="cpu")

    def tensors(paths):
        return torch.tensor(np.stack([np.asarray(Image.open(p)) for p in paths]), dtype=torch.float32).permute(0, 3, 1, 2) / 255

    from cvaudit.core.images import image_files as concept_files
    rng = np.random.default_rng(0)
    pool = [rows["train"][i]["path"] for i in sorted(rng.choice(len(rows["train"]), min(5 * 20, len(rows["train"])), replace=False))]
    mark = Concept(0, "mark", [tensors(concept_files(concepts["mark"]["path"]))])
    randoms = [Concept(i + 1, f"random{i}", [tensors(pool[i::5])]) for i in range(5)]
    torch.manual_seed(0)  # captum's classifier draws from torch's generator
    tc = TCAV(net, ["features"], save_path=str(tmp_path / "cav"))
    for c, name in enumerate(CLASSES):
        x = tensors([r["path"] for r in rows["test"] if r["label"] == name][:20])
        out = tc.interpret(x, [[mark, randoms[i]] for i in range(1, 5)], target=c)
        theirs = np.mean([v["features"]["sign_count"][0].item() for v in out.values()])
        mine = _by_class(ours, "mark")[name]["mean"]
        if name == "plain":  # the class the mark feeds: every CAV raises its logit (captum's SGD fit is rougher)
            assert mine == 1.0 and theirs >= 0.75


def test_layer_values_stream_activations_and_the_class_gradient(world):
    rows, _ = world
    net = MarkNet(mark_weight=200.0).eval()
    a, g, pred = layer_values(net, net.features, rows["test"][:7], SPEC, "cpu", target=2, batch_size=3)
    assert a.shape == g.shape == (7, 3 * S * S)
    assert np.allclose(g.reshape(7, 3, S, S)[:, 0], 200.0 / (S * S)) and np.allclose(g.reshape(7, 3, S, S)[:, 1:], 0)
    b, none, again = layer_values(net, net.features, rows["test"][:7], SPEC, "cpu")
    assert none is None and np.array_equal(a, b) and np.array_equal(pred, again)
    assert pred.tolist() == [CLASSES.index(r["label"]) for r in rows["test"][:7]]


def _built(*concepts):
    return {"built": {"concepts": {"layer": "features", "concepts": list(concepts)}}}


def _row(cls, diff, lo, hi, drives, shift=(0.0, -0.1, 0.1)):
    return {"class": cls, "mean": 0.5 + diff / 2, "random_mean": 0.5 - diff / 2, "p_adjusted": 0.01 if drives else 0.5,
            "drives": drives, "difference": {"value": diff, "n": 20, "ci_low": lo, "ci_high": hi, "method": "welch t",
                                             "note": "over 10 random counterpart sets"},
            "shift": {"value": shift[0], "n": 30, "ci_low": shift[1], "ci_high": shift[2], "method": "newcombe",
                      "note": f"some of 30 concept images predicted {cls}"}}


def test_the_verdict_reads_the_prediction_shift_of_the_classes_tcav_puts_above_random():
    from cvaudit.report.concept_sections import forbidden_concept
    from cvaudit.report.judge import judge
    t = {"warn": 0.1, "fail": 0.3}
    allowed = {"name": "stripes", "forbidden": False, "n_images": 30, "classes": [_row("h", 0.9, 0.8, 1.0, True, (0.9, 0.8, 1.0))]}
    assert forbidden_concept({}) is None and forbidden_concept(_built(allowed)) is None  # nothing forbidden: n/a
    mark = {"name": "mark", "forbidden": True, "n_images": 30, "classes": [
        _row("h", 0.05, -0.2, 0.3, False, (0.9, 0.7, 1.0)),  # the largest shift, but TCAV puts h above random too
        _row("v", -0.3, -0.5, -0.1, False, (0.95, 0.8, 1.0)),  # below the random CAVs: not this concept's doing
        _row("plain", 0.8, 0.6, 1.0, True, (0.6, 0.4, 0.8))]}
    est = forbidden_concept(_built(allowed, mark))
    assert est["value"] == 0.9 and est["ci_low"] == 0.7 and est["n"] == 30 and est["method"] == "newcombe"
    assert est["note"].startswith("mark on h: some of 30 concept images predicted h; TCAV 0.53 against 0.47")
    assert est["note"].endswith("not significant") and judge(est, t, False) == "fail"
    calm = {**mark, "classes": [_row("plain", 0.8, 0.6, 1.0, True, (0.02, -0.05, 0.09))]}
    est = forbidden_concept(_built(calm))
    assert est["value"] == 0.02 and est["note"].endswith("Holm p 0.01") and judge(est, t, False) == "pass"
    below = {**mark, "classes": [_row("plain", -0.2, -0.4, 0.0, True, (0.5, 0.3, 0.7)),
                                 _row("h", 0.0, -0.2, 0.2, False, (0.6, 0.4, 0.8))]}  # at the random CAVs': not above
    est = forbidden_concept(_built(below, {**below, "name": "tag"}))
    assert est["value"] == 0 and est["method"] == "none" and est["n"] == 30
    assert est["note"] == "TCAV scores no class above the random CAVs for mark, tag" and judge(est, t, False) == "pass"
    unseen = {"name": "tag", "forbidden": True, "n_images": 3, "classes": []}
    est = forbidden_concept(_built(unseen, {**unseen, "name": "logo"}))
    assert est["value"] is None and est["n"] == 0 and est["method"] == "newcombe"
    assert est["note"].startswith("forbidden concept(s) tag, logo not represented at features")
    assert judge(est, t, False) == "n/a"  # named, not scored: said in the note, never a pass


@pytest.mark.slow
def test_a_vit_is_read_at_its_last_blocks_tokens(world):
    """A vision transformer's CAVs live in its last block's tokens (the layer Grad-CAM reads); every class is
    scored and the gradient reaches those tokens."""
    from cvaudit.net.models import build_model

    from tiny_models import tiny_vit_spec
    rows, concepts = world
    spec = {**tiny_vit_spec(class_names=CLASSES), "mean": [0.0] * 3, "std": [1.0] * 3}
    torch.manual_seed(0)
    net = build_model(spec).eval()
    res = tcav(net, spec, {"mark": concepts["mark"]}, rows["train"], rows["test"], {**OPTIONS, "layer": "auto"},
               seed=0, device="cpu")
    assert res["layer"] == "blocks.1.norm1"
    mark = res["concepts"]["mark"]
    assert mark["separable"] and {r["class"] for r in mark["classes"]} == set(CLASSES)
    assert all(0 <= r["mean"] <= 1 and len(r["scores"]) == OPTIONS["random_sets"] for r in mark["classes"])
    _, g, _ = layer_values(net, net.get_submodule(res["layer"]), rows["test"][:4], spec, "cpu", target=0)
    assert g.shape[0] == 4 and np.abs(g).sum(1).min() > 0  # every image's tokens carry the class's gradient


def test_the_automatic_layer_is_one_where_the_class_gradient_differs_between_images():
    """Grad-CAM's layer, unless only pooling and a linear head follow it (a small CNN's last block, where every
    image would score alike): then the block before it. A ViT keeps its last block's tokens."""
    from cvaudit.explain.tcav import tcav_layer
    from cvaudit.net.models import build_model

    from tiny_models import tiny_cnn, tiny_vit_spec

    def name(net, spec, layer="auto"):
        return next(n for n, m in net.named_modules() if m is tcav_layer(net, spec, layer))
    net, spec = tiny_cnn(channels=(32, 64, 128))
    assert name(net, spec) == "features.9"  # the second block: the third (conv, ReLU, pooling) still follows
    assert name(net, spec, "features.14") == "features.14"  # a configured layer is taken as it is
    assert name(MarkNet(1.0), SPEC) == "features"  # a single block: nothing before it to fall back on
    vit = tiny_vit_spec()
    assert name(build_model(vit).eval(), vit) == "blocks.1.norm1"


@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_the_demos_concept_is_the_planted_cue_on_ordinary_garments_of_every_class():
    """config/concepts/corner_square is tools/make_concept.py's output for the demo's planted dataset: the same
    files and pixels, six garments per class, each with the cue's square and nothing else changed."""
    import importlib.util

    import yaml

    from cvaudit.config import resolve_paths, validate_config

    from conftest import REPO
    spec = importlib.util.spec_from_file_location("make_concept", REPO / "tools" / "make_concept.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = validate_config(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))
    resolve_paths(cfg, REPO / "config")
    made = tool.concept_images(cfg, "fmnist_shortcut", 6, "t10k")
    folder = REPO / "config" / "concepts" / "corner_square"
    assert sorted(n for n, _ in made) == sorted(p.name for p in folder.iterdir())
    assert sorted({n[:2] for n, _ in made}) == [f"{c:02d}" for c in range(10)]
    for name, im in made:
        a = np.asarray(Image.open(folder / name))
        assert np.array_equal(a, np.asarray(im)), name
        assert (a[1:5, 1:5] == 255).all()  # the demo's cue: a white 4 px square one pixel from the top-left corner
    assert cfg["concepts"]["corner_square"]["forbidden"]


def test_the_section_and_the_summary_carry_each_concepts_scores(tmp_path):
    import json

    from cvaudit.report.concept_sections import concepts_section, concepts_summary
    rows = [_row("h", 0.1, -0.1, 0.3, False, (0.0, -0.1, 0.1)), _row("plain", 0.6, 0.4, 0.8, True, (0.5, 0.3, 0.7))]
    for r in rows:
        r["confirmed"] = r["drives"] and r["shift"]["ci_low"] > 0
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    t = {"layer": "features", "random_sets": 10, "n_random_images": 330, "alpha": 0.05, "min_cav_accuracy": 0.7,
         "random": {"cav_accuracy": 0.48}, "n_tests": 2, "n_reference": 60, "concepts": {
             "mark": {"path": "m", "forbidden": True, "description": "a mark", "n_images": 24, "separable": True,
                      "cav_accuracy": {"mean": 0.9, "min": 0.8}, "examples": [str(tmp_path / "a.png"), str(tmp_path / "gone.png")],
                      "classes": rows},
             "tint": {"path": "b", "forbidden": False, "description": "", "n_images": 24, "separable": False,
                      "cav_accuracy": {"mean": 0.5, "min": 0.4}, "examples": [], "classes": [], "reason": "not represented"}}}
    (tmp_path / "tcav.json").write_text(json.dumps(t))
    section = concepts_section({"results": tmp_path / "tcav.json"})
    assert concepts_section({}) is None and concepts_summary(None) is None
    assert (section["layer"], section["random_sets"], section["n_random_images"], section["n_tests"], section["n_reference"]) == \
        ("features", 10, 330, 2, 60)
    assert section["random_cav_accuracy"] == 0.48 and section["alpha"] == 0.05 and section["min_cav_accuracy"] == 0.7
    mark, tint = section["concepts"]
    assert mark["name"] == "mark" and [r["class"] for r in mark["classes"]] == ["plain", "h"]  # the largest rise first
    assert mark["drives"] == ["plain"] and mark["confirmed"] == ["plain"] and len(mark["examples"]) == 1  # a moved image is skipped
    assert mark["examples"][0].startswith("data:image/png;base64,") and mark["description"] == "a mark"
    assert tint["reason"] == "not represented" and tint["classes"] == [] and tint["confirmed"] == []
    summary = concepts_summary(section)
    assert summary == {"layer": "features", "random_sets": 10, "concepts": {
        "mark": {"forbidden": True, "separable": True, "cav_accuracy": 0.9, "drives": ["plain"], "confirmed": ["plain"],
                 "scores": {"plain": {"tcav": 0.8, "random": 0.2, "p_adjusted": 0.01, "shift": 0.5},
                            "h": {"tcav": 0.55, "random": 0.45, "p_adjusted": 0.5, "shift": 0.0}}},
        "tint": {"forbidden": False, "separable": False, "cav_accuracy": 0.5, "drives": [], "confirmed": [], "scores": {}}}}
