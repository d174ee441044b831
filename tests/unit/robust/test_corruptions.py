"""The 15 common corruptions (Hendrycks & Dietterich): severity ordering on real images, the parameters
of the paper's tables, seeding; corruption error and mCE against a reference."""
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from cvaudit.data.sources import foolbox_dir
from cvaudit.robust.corruption_functions import CORRUPTIONS, TABLES, corrupt, table
from cvaudit.robust.corruptions import corruption_errors

# Corruptions whose parameters grow with severity in both tables: the image must not come closer to the
# original at any step. The others are ordered only end to end in the reference (zoom blur and snow
# change step sizes between severities, glass blur on small images is dominated by its pixel shuffle at
# every severity, frost crops a random photograph); elastic transform's ImageNet-C severities 1-2 are a
# large affine warp and 3-5 a fine elastic one, so its severities are not ordered by distance at all.
STEPWISE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "fog", "brightness",
            "contrast", "pixelate", "jpeg_compression"]
END_TO_END = ["glass_blur", "zoom_blur", "snow", "frost"]


def _photo(side):
    with Image.open(sorted(foolbox_dir().glob("imagenet_*.jpg"))[3]) as im:
        return np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR))


def _similarity(img, name, seeds=4):
    return [np.mean([structural_similarity(img, corrupt(img, name, s, np.random.default_rng(k)), channel_axis=-1,
                                           data_range=255) for k in range(seeds)]) for s in range(1, 6)]


@pytest.mark.parametrize("side", [28, pytest.param(224, marks=pytest.mark.slow)])
def test_every_corruption_grows_with_severity_on_a_real_photo(side):
    img = _photo(side)
    assert table(side) == ("CIFAR-10-C" if side == 28 else "ImageNet-C")
    for name in STEPWISE:
        sim = _similarity(img, name)
        # never closer at a higher severity (CIFAR-10-C's motion blur 3 and 4 differ only in a kernel radius
        # past its Gaussian's reach: equal), and clearly further at 5 than at 1
        assert all(np.diff(sim) <= 1e-9) and sim[-1] < sim[0] - 0.02, (name, np.round(sim, 3))
    for name in END_TO_END:
        sim = _similarity(img, name)
        assert sim[-1] < sim[0] - 0.02 and max(sim) < 0.99, (name, np.round(sim, 3))
    sim = _similarity(img, "elastic_transform")
    assert max(sim) < 0.9  # it moves the image at every severity


def test_corruptions_keep_the_image_format_follow_their_seed_and_the_papers_noise_levels():
    img = _photo(64)
    for name in CORRUPTIONS:
        a = corrupt(img, name, 3, np.random.default_rng(5))
        assert a.shape == img.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, corrupt(img, name, 3, np.random.default_rng(5))), name
    grey = np.full((128, 128, 3), 128, np.uint8)
    for s in range(1, 4):  # Gaussian noise: sigma from the ImageNet-C table, in 0-255 units (4 and 5 clip at 0 and 255)
        d = corrupt(grey, "gaussian_noise", s, np.random.default_rng(0)).astype(float) - 128
        assert d.std() == pytest.approx(TABLES["gaussian_noise"][0][s - 1] * 255, rel=0.05)
    small = np.full((32, 32, 3), 128, np.uint8)
    d = corrupt(small, "gaussian_noise", 5, np.random.default_rng(0)).astype(float) - 128
    assert d.std() == pytest.approx(TABLES["gaussian_noise"][1][4] * 255, rel=0.1)  # the CIFAR-10-C table
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(img, "rain", 1, np.random.default_rng(0))


def _stage(wrong_rate, clean_wrong, n=200, seed=0):
    """A corruptions stage's arrays with the given error rate per corruption and severity."""
    rng = np.random.default_rng(seed)
    rates = np.asarray(wrong_rate, float)  # (C, S)
    correct = rng.random(rates.shape + (n,)) >= rates[..., None]
    return {"correct": correct, "clean_correct": rng.random(n) >= clean_wrong, "paths": np.array([f"{i}.png" for i in range(n)]),
            "meta": {"corruptions": [f"c{i}" for i in range(rates.shape[0])], "severities": list(range(1, rates.shape[1] + 1))}}


def test_ce_and_mce_follow_the_papers_definitions():
    ref = _stage(np.full((3, 5), 0.4), 0.1, seed=1)
    own = dict(ref)
    e = corruption_errors(own, ref, "ref")
    assert e["mce"]["value"] == pytest.approx(1.0) and all(c["value"] == pytest.approx(1.0) for c in e["ce"])
    half = _stage(np.full((3, 5), 0.2), 0.05, seed=2)  # about half the reference's errors
    e = corruption_errors(half, ref, "ref", seed=0)
    wrong, rwrong = ~half["correct"], ~ref["correct"]
    want = [wrong[c].sum() / rwrong[c].sum() for c in range(3)]
    assert [c["value"] for c in e["ce"]] == pytest.approx(want)
    assert e["mce"]["value"] == pytest.approx(np.mean(want)) and 0.4 < e["mce"]["value"] < 0.6
    assert e["mce"]["ci_low"] < e["mce"]["value"] < e["mce"]["ci_high"] < 1
    clean_w, clean_rw = (~half["clean_correct"]).sum(), (~ref["clean_correct"]).sum()
    rel = np.mean([(wrong[c].sum() - 5 * clean_w) / (rwrong[c].sum() - 5 * clean_rw) for c in range(3)])
    assert e["relative_mce"]["value"] == pytest.approx(rel)
    other = {**half, "paths": half["paths"][::-1]}
    assert corruption_errors(other, ref, "ref")["mce"] is None  # other images: no CE
    larger = {**half, "meta": {**half["meta"], "input_size": 64, "table": "CIFAR-10-C"}}
    small = {**ref, "meta": {**ref["meta"], "input_size": 28, "table": "CIFAR-10-C"}}
    e = corruption_errors(larger, small, "ref")  # the same pixel table at another resolution is another corruption
    assert e["mce"] is None and e["ce"] is None and "28 px" in e["note"] and "64 px" in e["note"]
    alone = corruption_errors(half, None, None)
    assert alone["mce"] is None and alone["mean_error"]["value"] == pytest.approx(wrong.mean())


def test_the_stage_measures_against_its_reference_file_and_the_report_only_reads(tmp_path):
    """The corruptions job reads the reference's corruptions.npz (its input) and stores the CE and mCE; a failed
    reference leaves them out with its error; the report reads them, and names a file written without them."""
    from cvaudit import CvauditError
    from cvaudit.core.files import save_npz, write_failure
    from cvaudit.report.stage_sections import _corruptions
    from cvaudit.robust.corruptions import errors_against
    ref, half = _stage(np.full((3, 5), 0.4), 0.1, seed=1), _stage(np.full((3, 5), 0.2), 0.05, seed=2)
    path = tmp_path / "results" / "ref_model" / "robust" / "corruptions.npz"
    path.parent.mkdir(parents=True)
    save_npz(path, ref["meta"], correct=ref["correct"], clean_correct=ref["clean_correct"], paths=ref["paths"])
    e = errors_against(half, str(path), seed=0)
    assert e == corruption_errors(half, ref, "ref_model", seed=0) and 0.4 < e["mce"]["value"] < 0.6
    own = errors_against(half, None, seed=0)
    assert own["mce"] is None and "its CE is 1 by definition" in own["note"]
    write_failure(path, {"error": "out of memory"})
    failed = errors_against(half, str(path), seed=0)
    assert failed["mce"] is None and "ref_model's corruptions stage failed (out of memory)" in failed["note"]
    save_npz(tmp_path / "new.npz", {**half["meta"], "errors": e}, correct=half["correct"])
    assert _corruptions({"results": tmp_path / "new.npz"})["errors"] == e
    save_npz(tmp_path / "old.npz", half["meta"], correct=half["correct"])
    with pytest.raises(CvauditError, match="--forcerun"):
        _corruptions({"results": tmp_path / "old.npz"})


def test_the_schemas_corruption_list_is_the_modules():
    import yaml

    from conftest import REPO
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    co = schema["properties"]["robustness"]["properties"]["corruptions"]["properties"]["corruptions"]
    assert co["items"]["enum"] == co["default"] == list(CORRUPTIONS)
    assert set(TABLES) == set(CORRUPTIONS) and all(len(t) == 5 for pair in TABLES.values() for t in pair)


def _reference_function(name: str, offsets=None):
    """imagecorruptions' own code of one corruption (its module no longer imports on this stack: scikit-image
    dropped `multichannel`), run with scikit-image's gaussian under the new keyword and, given `offsets`, its
    np.random.randint drawing those values in order."""
    import ast
    import importlib.util
    import types
    from pathlib import Path

    from skimage.filters import gaussian as sk_gaussian
    src = (Path(importlib.util.find_spec("imagecorruptions").submodule_search_locations[0]) / "corruptions.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == name)
    draws = iter(offsets if offsets is not None else [])
    fake_np = types.SimpleNamespace(**{k: getattr(np, k) for k in ("uint8", "array", "clip", "float32")})
    fake_np.random = types.SimpleNamespace(randint=lambda lo, hi, size=None: next(draws))
    ns = {"np": fake_np, "gaussian": lambda x, sigma, multichannel=True: sk_gaussian(x, sigma=sigma, channel_axis=-1)}
    exec(compile(ast.Module([fn], []), "imagecorruptions/corruptions.py", "exec"), ns)
    return ns[name]


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_glass_blur_is_the_benchmarks_glass_blur(severity):
    """The same offsets through imagecorruptions' own glass_blur (ImageNet-C's table: a 128 px photo) and its
    final np.uint8: every pixel equal."""
    img = _photo(128)
    assert table(128) == "ImageNet-C"
    mine = corrupt(img, "glass_blur", severity, np.random.default_rng(severity))
    _, delta, iterations = TABLES["glass_blur"][0][severity - 1]
    offsets = np.random.default_rng(severity).integers(-delta, delta, size=(iterations * (128 - 2 * delta) ** 2, 2))
    ref = np.uint8(_reference_function("glass_blur", [tuple(o) for o in offsets])(Image.fromarray(img), severity))
    assert np.array_equal(mine, ref)
    assert (mine != img).any()


def test_the_confidence_against_corrupted_copies_is_an_auroc_with_its_interval():
    from cvaudit.robust.corruptions import auroc_estimate
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.8, 1.0, 40)
    apart = auroc_estimate(clean, rng.uniform(0.3, 0.7, 120), seed=0)
    assert apart["value"] == 1 and apart["n"] == 160 and apart["ci_low"] == 1
    mixed = auroc_estimate(clean, np.r_[clean, clean, clean], seed=0)  # as confident corrupted as clean
    assert mixed["value"] == 0.5 and mixed["ci_low"] < 0.5 < mixed["ci_high"]
    assert auroc_estimate(np.zeros(0), np.zeros(0), seed=0)["value"] is None
