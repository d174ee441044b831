"""The bad-input corpus: every input a user could get wrong gets a clear message naming the file or key
and the fix, or is read correctly, and nothing else is lost. Grow it whenever a user finds a new one.

Cases elsewhere: hostile class and file names (test_report_view), 16-bit, float, RGBA, palette,
EXIF and CMYK decoding (test_images), empty and single class and corrupt files (test_data), unknown
arch, missing and pickled and mismatched checkpoints (test_models, test_own_model), wrong config
types and unknown keys (test_config)."""
import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from cvaudit import CvauditError
from cvaudit.data import ingest, read_manifest


def _good(root: Path, n: int = 4):
    for c in ("bag", "sneaker"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k, src in enumerate(sorted(TINY.glob(f"{c}/fm*.png"))[:n]):
            (root / c / f"good{k}.png").write_bytes(src.read_bytes())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One imagefolder holding a file of every kind, ingested once: {name: rejection reason or None}."""
    root = tmp_path_factory.mktemp("corpus") / "imgs"
    _good(root)
    bag = root / "bag"
    src = sorted(TINY.glob("bag/fm*.png"))[0]
    fm = np.asarray(Image.open(src).convert("L"))
    (bag / "zero.png").write_bytes(b"")
    (bag / "truncated.png").write_bytes(src.read_bytes()[:60])
    (bag / "notes.txt").write_text("not an image")
    (bag / "text.png").write_text("a text file with an image extension")
    (bag / "png_named.jpg").write_bytes(sorted(TINY.glob("bag/fm*.png"))[5].read_bytes())  # a PNG named .jpg: read by content
    Image.fromarray(fm).resize((1, 1)).save(bag / "one_pixel.png")
    Image.new("1", (20000, 20000)).save(bag / "bomb.png")  # 400 Mpx: a decompression bomb
    Image.fromarray(fm.astype(np.uint16) * 257).save(bag / "sixteen.png")
    Image.fromarray(np.dstack([np.stack([fm] * 3, -1), (fm > 0).astype(np.uint8) * 255]), "RGBA").save(bag / "alpha.png")
    Image.fromarray(np.stack([fm] * 3, -1)).convert("P").save(bag / "palette.png")
    Image.fromarray(np.stack([fm] * 3, -1)).convert("CMYK").save(bag / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(np.stack([fm[:, :20]] * 3, -1)).save(bag / "rotated.jpg", exif=exif)
    (bag / "loop.png").symlink_to(bag / "loop.png")
    (bag / "link_to_good.png").symlink_to(bag / "good0.png")  # the same image twice: kept once
    out = root.parent / "out"
    ingest({"source": "imagefolder", "path": str(root), "split": {"val": 0.0, "test": 0.5}}, "corpus", 0, out)
    with open(out / "rejected.csv", newline="") as f:
        rejected = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    kept = {Path(r["original"]).name: r for r in read_manifest(out / "manifest.csv")}
    return rejected, kept


@pytest.mark.parametrize("name, words", [
    ("zero.png", "0 bytes"), ("truncated.png", "cannot be decoded"), ("notes.txt", "not an image extension"),
    ("text.png", "cannot be decoded"), ("one_pixel.png", "too small (1x1 px)"),
    ("bomb.png", "DecompressionBomb"), ("loop.png", "symbolic link that cannot be followed"),
])
def test_unreadable_files_are_listed_with_the_reason(corpus, name, words):
    rejected, kept = corpus
    assert words in rejected[name] and name not in kept


@pytest.mark.parametrize("name, mode, converted", [
    ("png_named.jpg", "L", ""), ("sixteen.png", "I;16", "scaled by their range"),
    ("alpha.png", "RGBA", "alpha composited"), ("palette.png", "P", ""), ("cmyk.jpg", "CMYK", "CMYK converted"),
    ("rotated.jpg", "RGB", "EXIF orientation 8"),
])
def test_unusual_but_valid_images_are_read_as_a_person_sees_them(corpus, name, mode, converted):
    _, kept = corpus
    r = kept[name]
    assert r["mode"].startswith(mode[:3]) and (converted in r["converted"] if converted else r["converted"] == "")
    with Image.open(r["path"]) as im:
        assert im.mode in ("L", "RGB", "P")
    if name == "rotated.jpg":  # stored 20 wide x 28 high, shown rotated: 28 wide x 20 high
        assert (r["width"], r["height"]) == ("28", "20")


def test_the_same_file_twice_is_kept_once_and_the_good_ones_are_all_kept(corpus):
    rejected, kept = corpus
    assert "kept once" in rejected["link_to_good.png"] and "good0.png" in rejected["link_to_good.png"]
    assert {f"good{k}.png" for k in range(4)} <= set(kept)
    assert len(rejected) == 8


def test_csv_with_missing_duplicate_unlabelled_and_odd_paths(tmp_path):
    root = tmp_path / "imgs"
    _good(root, n=5)
    odd = root / "bag" / "with space é.png"
    odd.write_bytes(sorted(TINY.glob("bag/fm*.png"))[6].read_bytes())
    table = tmp_path / "table.csv"
    lines = ["path,label"] + [f"imgs/{c}/good{k}.png,{c}" for c in ("bag", "sneaker") for k in range(4)]
    lines += ["imgs/bag/good0.png,bag",  # the same row twice
              "imgs/bag/good1.png,sneaker",  # the same file under another label
              "imgs/bag/missing.png,bag", f"{odd},bag", "imgs/sneaker/../bag/good2.png,bag", "imgs/sneaker/good4.png,"]
    table.write_text("\n".join(lines) + "\n")
    info = ingest({"source": "csv", "path": str(table), "split": {"val": 0.0, "test": 0.5}}, "t", 0, tmp_path / "o")
    with open(tmp_path / "o" / "rejected.csv", newline="") as f:
        rejected = [(Path(r["path"]).name, r["label"], r["reason"]) for r in csv.DictReader(f)]
    reasons = {(n, lab): why for n, lab, why in rejected}
    assert "file not found" in reasons[("missing.png", "bag")]
    assert reasons[("good0.png", "bag")] == "the same file listed again (line 2): kept once"
    assert reasons[("good1.png", "sneaker")].startswith("conflicting labels: the same image is labelled 'bag'")
    assert reasons[("good1.png", "bag")].startswith("conflicting labels")  # neither label is trusted
    assert "listed again (line 4)" in reasons[("good2.png", "bag")]  # ../ resolves to a file already listed
    assert reasons[("good4.png", "")].startswith("line 15: no label")
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    assert info["classes"] == ["bag", "sneaker"] and len(rows) == 8  # 8 good - good1 + the odd name, each once
    assert any(r["path"] == str(odd) for r in rows)


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_without_running_it(tmp_path):
    from cvaudit.models import read_state_dict

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        torch.save({"weight": torch.zeros(2), "x": Payload()}, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CvauditError, match=r"not a plain tensor checkpoint.*state_dict"):
        read_state_dict(p)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("patch, words", [
    ({"seed": "seven"}, "config key 'seed'"),
    ({"models": {"m": {"dataset": "tiny", "arch": "resnet"}}}, "config key 'models.m.arch'"),
    ({"models": {"m": {"dataset": "tiny", "arch": "simple_cnn", "input_size": "big"}}}, "models.m.input_size"),
    ({"models": {"m": {"dataset": "tiny", "arch": "simple_cnn", "weights": "missing.pt", "train": False}}}, None),
    ({"datasets": {"tiny": {"source": "imagefolder", "path": "x", "background": "pink"}}}, "datasets.tiny.background"),
    ({"models": {"m": {"dataset": "tiny", "arch": "simple_cnn", "normalisation": {"mean": [0.5]}}}},
     "models.m.normalisation"),
])
def test_wrong_config_values_name_the_key(patch, words, tmp_path):
    import yaml

    from cvaudit.config import SCHEMA, validate_config
    cfg = yaml.safe_load((SCHEMA.parent / "test.yaml").read_text())
    for k, v in patch.items():
        cfg[k] = v if not isinstance(v, dict) else {**cfg.get(k, {}), **v}
    if words is None:  # valid config; the missing file is named when the model is built
        from cvaudit.models import build_model
        from cvaudit.train import make_spec
        validate_config(cfg)
        with pytest.raises(CvauditError, match=r"weights file missing\.pt not found \(config key models\.\*\.weights\)"):
            build_model(make_spec(cfg["models"]["m"], ["a", "b"]))
        return
    with pytest.raises(CvauditError, match=words.replace(".", r"\.")):
        validate_config(cfg)


def test_class_names_with_dollar_signs_are_drawn_as_literal_text():
    import base64

    from cvaudit import figures
    names = ["cost $5", "$\\alpha$", "a_b^c"]
    uri = figures.confusion(names, names, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert all(n in svg for n in names)  # never parsed as mathtext


def test_an_empty_config_file_is_refused_not_replaced_by_the_demo(tmp_path):
    from conftest import smk
    (tmp_path / "empty.yaml").write_text("{}\n")
    p = smk(tmp_path, "--dry-run", "--configfile", str(tmp_path / "empty.yaml"), check=False)
    assert p.returncode != 0 and "empty.yaml is empty" in p.stdout + p.stderr
    assert "lite0_imagenet" not in p.stdout  # the demo's models were not planned


def test_csv_tables_from_excel_and_in_latin_1(tmp_path):
    root = tmp_path / "imgs"
    _good(root)
    rows = [f"imgs/{c}/good{k}.png,{c}" for c in ("bag", "sneaker") for k in range(4)]
    bom = tmp_path / "excel.csv"
    bom.write_bytes("path,label\n".encode("utf-8-sig") + ("\n".join(rows) + "\nimgs/bag/good0.png\n").encode())
    info = ingest({"source": "csv", "path": str(bom)}, "x", 0, tmp_path / "o1")
    assert info["classes"] == ["bag", "sneaker"] and info["n_images"] == 8  # the short last row: no label
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("path,label\n" + "\n".join(rows) + "\nimgs/bag/good0.png,caf\xe9\n").encode("latin-1"))
    with pytest.raises(CvauditError, match=r"latin\.csv: not UTF-8 text .*CSV UTF-8"):
        ingest({"source": "csv", "path": str(latin)}, "y", 0, tmp_path / "o2")


@pytest.mark.parametrize("arch, opts, words", [
    ("simple_cnn", {"chanels": [8]}, r"arch_options for simple_cnn: .*chanels"),
    ("timm:tf_efficientnet_lite0", {"checkpoint_path": "/tmp/x.pth"}, r"checkpoint_path would load weights"),
    ("torchvision:resnet18", {"weights": "IMAGENET1K_V1"}, r"weights would load weights"),
])
def test_arch_options_are_checked_before_anything_loads(arch, opts, words):
    from cvaudit.models import build_model
    with pytest.raises(CvauditError, match=words):
        build_model({"arch": arch, "arch_options": opts, "weights": "none", "num_classes": 3, "input_size": 32})
