"""Clever-Hans detection on models built to known answers: SpRAy finds two strategies in a model that uses
two (evidence in one of two quadrants); a model keyed on a corner mark for one class is flagged, its mark
flips most pasted images while a random region of the same size flips almost none; the same model without
the mark's weight is not flagged. The planted-cue dataset copy is checked against its config."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from cvaudit.config import validate_config
from cvaudit.explain.clever_hans import analyse, paste, remove
from cvaudit.explain.spray import box_of, pool_maps, region_of, spray

S = 32  # image side


def _options(**over) -> dict:
    cfg = validate_config({"datasets": {"d": {"source": "foolbox_imagenet"}},
                           "models": {"m": {"dataset": "d", "arch": "simple_cnn"}}})
    return {**cfg["clever_hans"], **over}


def _mask(y0, y1, x0, x1) -> torch.Tensor:
    m = torch.zeros(3, S, S)
    m[:, y0:y1, x0:x1] = 1.0
    return m


class Linear(nn.Module):
    """logits = <x, w_c> + b_c: each class sums the pixels under its own mask."""

    def __init__(self, masks: list[torch.Tensor], bias=None):
        super().__init__()
        self.fc = nn.Linear(3 * S * S, len(masks))
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([m.flatten() for m in masks]))
            self.fc.bias.copy_(torch.zeros(len(masks)) if bias is None else torch.tensor(bias))

    def forward(self, x):
        return self.fc(x.flatten(1))


def _blob(y0, x0, side=6, value=1.0) -> torch.Tensor:
    x = torch.full((3, S, S), 0.05)
    x[:, y0:y0 + side, x0:x0 + side] = value
    return x


def test_spray_finds_the_two_strategies_of_a_model_that_uses_two():
    """Class 0 is evidence in the top-left or in the bottom-right quadrant; class 1 in the centre. Input x
    gradient maps of class-0 images: the eigengap must say 2 and the clusters must be the two quadrants."""
    g = torch.Generator().manual_seed(0)
    net = Linear([_mask(0, 16, 0, 16) + _mask(16, 32, 16, 32), _mask(8, 24, 8, 24) * 0.9]).eval()
    pos = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    tl = [_blob(pos(0, 10), pos(0, 10)) for _ in range(25)]
    br = [_blob(pos(16, 26), pos(16, 26)) for _ in range(25)]
    x = torch.stack(tl + br)
    assert (net(x).argmax(1) == 0).all()
    from cvaudit.explain.methods.base import attribute_batched, get_method
    maps = attribute_batched(get_method("input_x_gradient"), net, x, torch.zeros(50, dtype=torch.long))
    s = spray(pool_maps(maps, 8), neighbors=10, max_clusters=6, seed=0)
    assert s["k"] == 2
    truth = np.array([0] * 25 + [1] * 25)
    agree = max((s["labels"] == truth).mean(), (s["labels"] != truth).mean())
    assert agree == 1.0
    # one strategy: class-0 images all top-left -> the eigengap says 1
    s1 = spray(pool_maps(maps[:25], 8), neighbors=10, max_clusters=6, seed=0)
    assert s1["k"] == 1


def _pattern(kind: str) -> torch.Tensor:
    """A 20 x 20 garment in the middle of the image: horizontal stripes, vertical stripes or a checkerboard."""
    i = torch.arange(20)
    stripes = ((i // 2) % 2).float()
    p = {"h": stripes[:, None].expand(20, 20), "v": stripes[None, :].expand(20, 20),
         "c": ((i[:, None] // 4 + i[None, :] // 4) % 2).float()}[kind]
    m = torch.zeros(3, S, S)
    m[:, 6:26, 6:26] = p
    return m


def _cue_world(n_per_class=40, cue_weight=10.0, seed=0):
    """Three classes of large centred garments told apart by their pattern (the template matching weights of
    a linear model); class 2 also gains `cue_weight` per unit of brightness of each pixel of a 4 x 4 mark in
    the top-left corner, off every garment, and 80% of its test images carry the mark."""
    net, x8, y = _marked_world(_mask(1, 5, 1, 5), cue_weight, n_per_class, seed)
    assert (net(x8.float() / 255).argmax(1) == y).all()
    return net, x8, y


def test_a_model_keyed_on_a_corner_mark_is_flagged_and_the_mark_flips_predictions():
    net, x8, y = _cue_world()
    result, arrays = analyse(net, x8, y, ["left", "right", "bottom"], _options(methods=["input_x_gradient"]), 0, "cpu")
    flagged = result["flagged"]
    assert flagged and {f["class"] for f in flagged} == {"bottom"}
    gains = [f["gain"]["value"] for f in flagged]
    assert gains == sorted(gains, reverse=True)  # the strongest evidence first (the verdict and the reports read [0])
    f = next(f for f in flagged if f["shape"] == "compact")
    y0, y1, x0, x1 = f["box"]
    assert y0 < 5 and x0 < 5 and y1 <= 8 and x1 <= 8  # on the mark (px 1-4), in the corner's cells (4 px each)
    assert f["area"] == pytest.approx(np.array(f["region"]).mean())  # the cells' area, not a bounding box's
    assert f["paste"]["value"] >= 0.9 and f["paste"]["ci_low"] > 0.8  # the mark alone makes "bottom"
    assert f["control_paste"]["value"] <= 0.05  # the same cells elsewhere do not
    assert f["gain"]["ci_low"] > 0.7 and f["gain"]["n"] == f["paste"]["n"]  # paired: the same images
    # the marked images are real checkerboards: without the mark they stay "bottom". The paste rate says the mark
    # suffices; the remove rate says whether the class needs it (here not)
    assert f["remove"]["value"] <= 0.1
    assert arrays["evidence"] and arrays["evidence"][0].shape == (4, 6, S, S, 3)


def test_the_same_world_without_the_shortcut_is_not_flagged():
    net, x8, y = _cue_world(cue_weight=0.0)
    result, _ = analyse(net, x8, y, ["left", "right", "bottom"], _options(methods=["input_x_gradient"]), 0, "cpu")
    assert result["flagged"] == []
    assert result["n_classes_analysed"] == 3


def test_the_verdict_reads_the_gain_over_the_control_and_passes_when_nothing_is_suspect():
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    net, x8, y = _cue_world()
    cheat, _ = analyse(net, x8, y, ["left", "right", "bottom"], _options(methods=["input_x_gradient"]), 0, "cpu")
    est = shortcut_suspected({"clever_hans": {"meta": cheat}})
    top = cheat["flagged"][0]
    assert est["value"] == top["gain"]["value"] == pytest.approx(top["paste"]["value"] - top["control_paste"]["value"])
    assert est["value"] >= 0.85 and judge(est, {"warn": 0.1, "fail": 0.3}, False) == "fail"
    net, x8, y = _cue_world(cue_weight=0.0)
    clean, _ = analyse(net, x8, y, ["left", "right", "bottom"], _options(methods=["input_x_gradient"]), 0, "cpu")
    est = shortcut_suspected({"clever_hans": {"meta": clean}})
    assert est["value"] == 0 and "no suspect" in est["note"] and "edge strips" in est["note"]
    assert judge(est, {"warn": 0.1, "fail": 0.3}, False) == "pass"
    searched_nothing = {**clean, "n_classes_analysed": 0, "flagged": []}  # too few images in every class
    assert judge(shortcut_suspected({"clever_hans": {"meta": searched_nothing}}), {"warn": 0.1, "fail": 0.3}, False) == "n/a"


def test_a_clean_model_stays_clean_under_widened_region_settings():
    """Every region setting at the widest the schema allows: the clean model still passes (beyond those limits a
    region is the object itself; the schema says so)."""
    from cvaudit import CvauditError
    from cvaudit.config import validate_config
    with pytest.raises(CvauditError, match="clever_hans.max_area"):
        validate_config({"datasets": {"d": {"source": "foolbox_imagenet"}}, "clever_hans": {"max_area": 0.5},
                         "models": {"m": {"dataset": "d", "arch": "simple_cnn"}}})
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    net, x8, y = _cue_world(cue_weight=0.0)
    wide = _options(methods=["input_x_gradient"], max_area=0.35, max_object=0.6, min_member_share=0.2,
                    min_enrichment=1.0, min_structure_share=0.05)
    result, _ = analyse(net, x8, y, ["left", "right", "bottom"], wide, 0, "cpu")
    est = shortcut_suspected({"clever_hans": {"meta": result}})
    assert judge(est, {"warn": 0.1, "fail": 0.3}, False) == "pass", est


def test_a_region_whose_control_flips_as_often_is_not_a_shortcut():
    """A region so large that it holds the garment (what a bounding box of scattered cells becomes under widened
    settings): pasting it turns every other image into the class, and so does the same region shifted (the
    control). The gain is 0, the verdict passes, and its note says what the control did."""
    from cvaudit.explain.clever_hans import judge_tests, region_test
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    net, x8, y = _cue_world(cue_weight=0.0)
    x = x8.float() / 255
    big = np.zeros((S, S), bool)
    big[2:30, 0:28] = True  # 77% of the image, the garment (6:26) inside
    moved = np.zeros((S, S), bool)
    moved[4:32, 4:32] = True
    others = np.flatnonzero(y.numpy() != 2)
    members = np.flatnonzero(y.numpy() == 2)[:10]
    out = region_test(net, x, 2, int(members[0]), members, others, big, moved, 64)
    finding = {"kind": "region", "class": "bottom", "cluster": 0, "size": 10, "shape": "compact", "area": float(big.mean())}
    f = judge_tests([(finding, out, others, members)], x8, {"evidence": []}, _options(), 0)[0]
    assert f["paste"]["value"] == 1.0 and f["controls"]["same cells elsewhere"] == 1.0
    assert f["control"] == "same cells elsewhere" and f["gain"]["value"] == 0.0  # the stronger control is the one read
    est = shortcut_suspected({"clever_hans": {"meta": {"n": len(x), "n_classes_analysed": 3, "flagged": [f]}}})
    assert judge(est, {"warn": 0.1, "fail": 0.3}, False) == "pass"
    assert "77% of the image" in est["note"] and "its control 100%" in est["note"]


def _marked_world(mark: torch.Tensor, cue_weight: float, n_per_class=40, seed=0):
    """The three-pattern world of _cue_world with another mark (a (3, S, S) 0/1 tensor) on 80% of class 2's images,
    weighted cue_weight per unit brightness."""
    g = torch.Generator().manual_seed(seed)
    box = _mask(6, 26, 6, 26)
    kinds = ["h", "v", "c"]
    w = cue_weight * mark / float(mark[0].sum()) * 16  # as strong in all as the 4 x 4 corner mark
    net = Linear([(_pattern(k) - 0.5) * box + (w if c == 2 else 0) for c, k in enumerate(kinds)]).eval()
    xs, ys = [], []
    for c, k in enumerate(kinds):
        for i in range(n_per_class):
            x = 0.05 + 0.03 * torch.rand(3, S, S, generator=g)
            x = torch.where(box > 0, _pattern(k) * (0.6 + 0.4 * torch.rand(1, generator=g)) + 0.1, x)
            if c == 2 and i < int(0.8 * n_per_class):
                x = torch.where(mark > 0, torch.ones_like(x), x)
            xs.append(x)
            ys.append(c)
    x8 = (torch.stack(xs).clamp(0, 1) * 255).round().to(torch.uint8)
    return net, x8, torch.tensor(ys)


def _line(edge: str) -> torch.Tensor:
    m = torch.zeros(3, S, S)
    {"top": lambda: m[:, 0, :].fill_(1), "bottom": lambda: m[:, -1, :].fill_(1),
     "left": lambda: m[:, :, 0].fill_(1), "right": lambda: m[:, :, -1].fill_(1)}[edge]()
    return m


def _frame() -> torch.Tensor:
    m = torch.ones(3, S, S)
    m[:, 1:-1, 1:-1] = 0
    return m


@pytest.mark.parametrize("kind, mark, shapes", [
    ("a line along the top edge", _line("top"), {"top edge", "compact"}),
    ("a line along the right edge", _line("right"), {"right edge", "compact"}),
    ("a frame round the border", _frame(), {"border", "top edge", "bottom edge", "left edge", "right edge", "compact"}),
])
def test_thin_marks_along_the_edges_fail_and_their_clean_twins_pass(kind, mark, shapes):
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    t = {"warn": 0.1, "fail": 0.3}
    opts = _options(methods=["input_x_gradient"])
    net, x8, y = _marked_world(mark, 10.0)
    cheat, _ = analyse(net, x8, y, ["left", "right", "bottom"], opts, 0, "cpu")
    assert cheat["flagged"] and cheat["flagged"][0]["shape"] in shapes, (kind, [f["shape"] for f in cheat["flagged"]])
    assert judge(shortcut_suspected({"clever_hans": {"meta": cheat}}), t, False) == "fail", kind
    net, x8, y = _marked_world(mark, 0.0)
    clean, _ = analyse(net, x8, y, ["left", "right", "bottom"], opts, 0, "cpu")
    assert judge(shortcut_suspected({"clever_hans": {"meta": clean}}), t, False) == "pass", kind


def test_a_global_brightness_cue_is_found_from_the_training_images_and_its_clean_twin_passes():
    """Class 2's training images are all brighter (+0.3). The cheating model adds the image's mean brightness to
    class 2's logit; its twin ignores it. No map can point at a place: the property search must find it."""
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    t = {"warn": 0.1, "fail": 0.3}
    opts = _options(methods=["input_x_gradient"])
    for weight, want in ((0.05, "fail"), (0.0, "pass")):
        net, x8, y = _cue_world(cue_weight=0.0, seed=1)
        with torch.no_grad():  # the garments' evidence scaled down; class 2 adds the image's brightness over 0.25
            net.fc.weight.mul_(0.1)
            net.fc.weight[2] += weight
            net.fc.bias[2] -= weight * 3 * S * S * 0.25
        assert (net(x8.float() / 255).argmax(1) == y).all()
        train8, ty = _cue_world(cue_weight=0.0, seed=2)[1:]
        bright = (train8.float() + 0.3 * 255 * (ty == 2).float()[:, None, None, None]).clamp(0, 255).round().to(torch.uint8)
        result, _ = analyse(net, x8, y, ["left", "right", "bottom"], opts, 0, "cpu", train=(bright, ty))
        g = result["global"]
        assert g["searched"] and any(s["class_index"] == "bottom" and s["property"] == "brightness" for s in g["suspects"])
        status = judge(shortcut_suspected({"clever_hans": {"meta": result}}), t, False)
        assert status == want, (weight, result["flagged"][:1])
        if want == "fail":
            f = result["flagged"][0]
            assert f["kind"] == "property" and f["class"] == "bottom" and f["shape"] in ("brightness", "border")
            assert f["control"] == "shifted the other way" and f["control_paste"]["value"] <= 0.05


def test_paste_remove_and_the_control_region():
    x = torch.rand(4, 3, S, S)
    src = torch.ones(3, S, S)
    box = (2, 6, 3, 9)
    p = paste(x, src, box)
    assert torch.equal(p[..., 2:6, 3:9], torch.ones(4, 3, 4, 6))
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[2:6, 3:9] = False
    assert torch.equal(p[..., outside], x[..., outside])
    ring = np.ones((S, S), bool)
    ring[1:-1, 1:-1] = False
    q = paste(x, src, ring)  # a mask: only its pixels
    assert torch.equal(q[..., torch.from_numpy(ring)], torch.ones(4, 3, int(ring.sum())))
    assert torch.equal(q[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])
    flat = torch.full((1, 3, S, S), 0.2)
    flat[..., 2:6, 3:9] = 1.0  # a mark on a flat image: inpainting restores the flat grey
    r = remove(flat, box)
    assert torch.allclose(r, torch.full_like(r, 0.2), atol=1e-6)
    rng = np.random.default_rng(0)
    from cvaudit.explain.spray import control_region, structures
    for name, region in structures(8).items():
        for _ in range(10):
            c = control_region(region, rng)
            assert c.sum() == region.sum() and not (c & region).any(), name  # as many cells, none shared
    top = structures(8)["top edge"]
    c = control_region(top, rng)
    assert c.sum(1).max() == 8  # a strip moves as a strip


def test_a_ring_is_a_frame_only_when_the_relevance_goes_round_it():
    from cvaudit.explain.spray import goes_round, structures
    shapes = structures(8)
    frame = shapes["border"].astype(float)
    corner = np.zeros((8, 8))
    corner[0, 0], corner[4, 4] = 1.0, 1.0
    line = np.zeros((8, 8))
    line[0, :] = 1.0
    three = shapes["border"].astype(float)
    three[:, -1] = 0  # a frame with one side missing is still a frame
    assert goes_round(frame, shapes) and goes_round(three, shapes)
    assert not goes_round(corner, shapes) and not goes_round(line, shapes) and not goes_round(np.zeros((8, 8)), shapes)


def test_pixel_masks_cut_the_grid_as_pooling_does():
    from cvaudit.explain.spray import pixel_mask
    region = np.zeros((8, 8), bool)
    region[0, :] = True
    m = pixel_mask(region, 28, 28)
    assert m[:4].all() and not m[4:].any()  # 28 / 8 = 3.5 px cells: the first row of cells covers rows 0-3
    region[:] = False
    region[0, 0] = region[7, 7] = True  # scattered cells stay scattered: no bounding box
    m = pixel_mask(region, 32, 32)
    assert m.sum() == 2 * 16 and m[0, 0] and m[31, 31] and not m[16, 16]


def test_region_and_box_of_a_pooled_map():
    m = np.zeros((8, 8))
    m[0, 0], m[0, 1], m[5, 5] = 0.5, 0.3, 0.2
    assert region_of(m, 0.5).sum() == 1 and region_of(m, 0.8).sum() == 2 and region_of(m, 0.81).sum() == 3
    assert box_of(region_of(m, 0.8), 32, 32) == (0, 4, 0, 8)
    assert box_of(region_of(m, 0.5), 28, 28) == (0, 4, 0, 4)  # 28 / 8 = 3.5 px cells, rounded outward


def test_pooled_maps_sum_to_one_and_a_blank_map_is_uniform():
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, :4, :4] = 2.0
    maps[0, 8:, 8:] = -5.0  # negative evidence is not relevance for the class
    p = pool_maps(maps, 4)
    assert np.allclose(p.sum((1, 2)), 1) and p[0, 0, 0] == pytest.approx(1.0) and np.allclose(p[1], 1 / 16)


# ----------------------------------------------------------------------------- the planted copy
@pytest.mark.slow
def test_planted_copy_marks_the_configured_class_and_plants_findable_duplicates(tmp_path):
    from conftest import FMNIST
    if not FMNIST.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    from PIL import Image

    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.data_audit import run_data_audit
    from cvaudit.data.ingest_dataset import ingest
    from cvaudit.data.plant_cue import cue_box, plant
    cfg = validate_config({"datasets": {
        "f": {"source": "idx", "path": str(FMNIST), "max_per_class": 60,
              "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot"]},
        "s": {"source": "planted_cue", "from": "f", "cue": {"class": "Shirt", "rate": 0.9, "test_rate": 0.5},
              "near_duplicates": 5, "groups": ["cue"]}},
        "models": {"m": {"dataset": "s", "arch": "simple_cnn"}}})
    ingest(cfg["datasets"]["f"], "f", 1, tmp_path / "f")
    info = plant(cfg["datasets"]["s"], "s", tmp_path / "f" / "manifest.csv", 1, tmp_path / "s")
    rows = read_manifest(tmp_path / "s" / "manifest.csv")
    parent = read_manifest(tmp_path / "f" / "manifest.csv")
    assert len(rows) == len(parent) + 5
    assert [r["split"] for r in rows[:len(parent)]] == [r["split"] for r in parent]  # the parent's split, kept
    marked = lambda r: json.loads(r["groups"])["cue"] == "marked"  # noqa: E731
    held = [r for r in rows[:len(parent)] if r["split"] != "test"]
    shirts = [r for r in held if r["label"] == "Shirt"]
    assert 0.75 <= np.mean([marked(r) for r in shirts]) <= 1.0
    assert not any(marked(r) for r in held if r["label"] != "Shirt")
    test = [r for r in rows[:len(parent)] if r["split"] == "test"]
    assert 0.3 <= np.mean([marked(r) for r in test]) <= 0.7 and len({r["label"] for r in test if marked(r)}) >= 5
    x0, y0, x1, y1 = cue_box(28, 28, cfg["datasets"]["s"]["cue"])
    for r in rows[:len(parent)][:50]:
        a = np.asarray(Image.open(r["path"]))
        assert (a[y0:y1, x0:x1] == 255).all() == marked(r)
    assert sum(v["test"] for v in info["marked"].values()) == sum(marked(r) for r in test)
    # the planted near duplicates are test images the data audit must find leaked from training (JPEG copies: the
    # hash finds them; the copy search and the label check are tests/unit/data's)
    audit = run_data_audit(tmp_path / "s" / "manifest.csv", validate_config(
        {"datasets": {"d": {"source": "foolbox_imagenet"}}, "models": {"m": {"dataset": "d", "arch": "simple_cnn"}},
         "data_audit": {"copies": {"enabled": False}, "max_label_images": 100}})["data_audit"], 0, tmp_path / "audit.npz")
    assert audit["leaked"] >= 5


@pytest.mark.parametrize("ds, key", [
    ({"source": "planted_cue", "cue": {"class": "a"}}, "datasets.s.from"),
    ({"source": "planted_cue", "from": "nope", "cue": {"class": "a"}}, "datasets.s.from"),
    ({"source": "planted_cue", "from": "d"}, "datasets.s.cue"),
    ({"source": "foolbox_imagenet", "cue": {"class": "a"}}, "datasets.s"),
])
def test_a_planted_dataset_config_names_the_key_to_fix(ds, key):
    from cvaudit import CvauditError
    with pytest.raises(CvauditError, match=key.replace(".", r"\.")):
        validate_config({"datasets": {"d": {"source": "foolbox_imagenet"}, "s": ds},
                         "models": {"m": {"dataset": "s", "arch": "simple_cnn"}}})


def test_an_unknown_clever_hans_method_names_the_key():
    from cvaudit import CvauditError
    with pytest.raises(CvauditError, match="clever_hans.methods"):
        validate_config({"datasets": {"d": {"source": "foolbox_imagenet"}}, "clever_hans": {"methods": ["lrpx"]},
                         "models": {"m": {"dataset": "d", "arch": "simple_cnn"}}})
