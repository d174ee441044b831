"""TCAV against known answers: a network set by hand to read a red corner mark (its `mark` channel, fed to class
2's logit or not) beside green stripes (two pattern channels, one per other class). The mark concept drives the
class the mark feeds and no other, not at all in the clean twin; a concept of something the layer cannot see is
not separable; and captum's TCAV (its own linear classifier and hooks) gives the same scores."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cvaudit.explain.tcav import concept_test, fit_cav, layer_values, tcav

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
    the mark on plain images, and training images tinted blue (a channel the network does not read)."""
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
        Image.fromarray(_image("plain", rng, mark=True)).save(tmp_path / "mark" / f"{i}.png")
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
def test_the_mark_concept_drives_the_class_the_mark_feeds_and_no_other(world):
    rows, concepts = world
    net = MarkNet(mark_weight=20.0).eval()
    x = torch.tensor(np.stack([np.asarray(Image.open(r["path"])) for r in rows["test"]]), dtype=torch.float32)
    assert (net(x.permute(0, 3, 1, 2) / 255).argmax(1).numpy() == [CLASSES.index(r["label"]) for r in rows["test"]]).all()
    res = tcav(net, SPEC, {"mark": concepts["mark"]}, rows["train"], rows["test"], OPTIONS, seed=0, device="cpu")
    assert res["layer"] == "features" and res["n_tests"] == 3
    mark = res["concepts"]["mark"]
    assert mark["separable"] and mark["cav_accuracy"]["mean"] >= 0.85  # a quarter of the random images carry it too
    got = _by_class(res, "mark")
    assert got["plain"]["mean"] == 1.0 and got["plain"]["drives"] and got["plain"]["p_adjusted"] < 0.01
    d = got["plain"]["difference"]
    assert d["ci_low"] > 0.2 and d["n"] == 20 and d["method"] == "welch t"
    assert not got["h"]["drives"] and not got["v"]["drives"]
    assert 0.2 < res["random"]["cav_accuracy"] < 0.8  # random sets against random sets: no direction to learn
    # the clean twin: the same layer sees the mark (separable), but no class's logit moves with it
    clean = tcav(MarkNet(mark_weight=0.0).eval(), SPEC, {"mark": concepts["mark"]}, rows["train"], rows["test"],
                 OPTIONS, seed=0, device="cpu")
    assert clean["concepts"]["mark"]["separable"]
    assert not any(r["drives"] for r in clean["concepts"]["mark"]["classes"])
    # a mark that lowers the class: significant, the other way, never "drives"
    against = _by_class(tcav(MarkNet(mark_weight=-20.0).eval(), SPEC, {"mark": concepts["mark"]}, rows["train"],
                             rows["test"], OPTIONS, seed=0, device="cpu"), "mark")
    assert against["plain"]["mean"] == 0.0 and against["plain"]["significant"] and not against["plain"]["drives"]


@pytest.mark.slow
def test_a_concept_the_layer_cannot_see_is_not_read(world):
    rows, concepts = world
    res = tcav(MarkNet(mark_weight=20.0).eval(), SPEC, {"blue": concepts["blue"]}, rows["train"], rows["test"],
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
    random sets: the mark's score for the class it feeds is 1 in ours and at least 0.75 in captum's, at most a half
    for the others in both."""
    from captum.concept import TCAV, Concept
    rows, concepts = world
    net = MarkNet(mark_weight=20.0).eval()
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
        else:  # the others: the CAVs' incidental directions, and few of them (4 random sets)
            assert mine <= 0.5 and theirs <= 0.5, (name, mine, theirs)


def test_layer_values_stream_activations_and_the_class_gradient(world):
    rows, _ = world
    net = MarkNet(mark_weight=20.0).eval()
    a, g = layer_values(net, net.features, rows["test"][:7], SPEC, "cpu", target=2, batch_size=3)
    assert a.shape == g.shape == (7, 3 * S * S)
    assert np.allclose(g.reshape(7, 3, S, S)[:, 0], 20.0 / (S * S)) and np.allclose(g.reshape(7, 3, S, S)[:, 1:], 0)
    b, none = layer_values(net, net.features, rows["test"][:7], SPEC, "cpu")
    assert none is None and np.array_equal(a, b)


def _built(*concepts):
    return {"built": {"concepts": {"layer": "features", "concepts": list(concepts)}}}


def _row(cls, diff, lo, hi, drives):
    return {"class": cls, "mean": 0.5 + diff / 2, "random_mean": 0.5 - diff / 2, "p_adjusted": 0.01 if drives else 0.5,
            "drives": drives, "difference": {"value": diff, "n": 20, "ci_low": lo, "ci_high": hi, "method": "welch t",
                                             "note": "over 10 random counterpart sets"}}


def test_the_verdict_reads_the_forbidden_concepts_largest_rise_and_says_what_was_scored():
    from cvaudit.report.checks import forbidden_concept
    from cvaudit.report.judge import judge
    t = {"warn": 0.1, "fail": 0.3}
    allowed = {"name": "stripes", "forbidden": False, "classes": [_row("h", 0.9, 0.8, 1.0, True)]}
    assert forbidden_concept({}) is None and forbidden_concept(_built(allowed)) is None  # nothing forbidden: n/a
    mark = {"name": "mark", "forbidden": True, "classes": [_row("h", 0.05, -0.2, 0.3, False), _row("plain", 0.8, 0.6, 1.0, True)]}
    est = forbidden_concept(_built(allowed, mark))
    assert est["value"] == 0.8 and est["ci_low"] == 0.6 and est["n"] == 20  # the forbidden one, its largest rise
    assert est["note"].startswith("mark drives plain: TCAV 0.90 against 0.10") and "random counterpart" in est["note"]
    assert judge(est, t, False) == "fail"
    calm = {**mark, "classes": [_row("h", 0.05, -0.2, 0.3, False)]}
    est = forbidden_concept(_built(calm))
    assert "does not significantly drive h" in est["note"] and judge(est, t, False) != "fail"
    unseen = {"name": "tag", "forbidden": True, "classes": []}
    est = forbidden_concept(_built(unseen))
    assert est["value"] is None and "tag not represented at features" in est["note"]
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
    _, g = layer_values(net, net.get_submodule(res["layer"]), rows["test"][:4], spec, "cpu", target=0)
    assert g.shape[0] == 4 and np.abs(g).sum(1).min() > 0  # every image's tokens carry the class's gradient
