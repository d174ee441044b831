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
from PIL import Image

from cvaudit import CvauditError
from cvaudit.core.manifest import read_manifest
from cvaudit.data.ingest_dataset import ingest

from conftest import TINY


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
    from cvaudit.net.models import read_state_dict

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
        from cvaudit.model.train_model import make_spec
        from cvaudit.net.models import build_model
        validate_config(cfg)
        with pytest.raises(CvauditError, match=r"weights file missing\.pt not found \(config key models\.\*\.weights\)"):
            build_model(make_spec(cfg["models"]["m"], ["a", "b"]))
        return
    with pytest.raises(CvauditError, match=words.replace(".", r"\.")):
        validate_config(cfg)


def test_class_names_with_dollar_signs_are_drawn_as_literal_text():
    import base64

    from cvaudit.report import figures
    names = ["cost $5", "$\\alpha$", "a_b^c"]
    uri = figures.confusion(names, names, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert all(n in svg for n in names)  # never parsed as mathtext


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
    from cvaudit.net.models import build_model
    with pytest.raises(CvauditError, match=words):
        build_model({"arch": arch, "arch_options": opts, "weights": "none", "num_classes": 3, "input_size": 32})


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[: len(b) // 2], r"damaged \(EOFError"),  # a truncated download
    (lambda b: b"not gzip at all" + b[:100], r"damaged \(BadGzipFile"),
])
def test_a_damaged_idx_archive_is_named_with_the_fix(tmp_path, damage, words):
    import gzip
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    img = gzip.compress(b"\0\0\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + x.tobytes())
    (tmp_path / "t-images-idx3-ubyte.gz").write_bytes(damage(img))
    (tmp_path / "t-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + (2).to_bytes(4, "big") + b"\0\1"))
    with pytest.raises(CvauditError, match=words + r".*t-images-idx3-ubyte.gz|t-images-idx3-ubyte.gz.*" + words):
        ingest({"source": "idx", "path": str(tmp_path)}, "x", 0, tmp_path / "o")


def test_garbage_weights_and_a_truncated_model_file_are_named_with_the_fix(tmp_path):
    from cvaudit.net.models import build_model, load_model, read_state_dict, save_model
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!" * 8)
    with pytest.raises(CvauditError, match=r"w\.safetensors is not a readable \.safetensors file .*save_file"):
        read_state_dict(tmp_path / "w.safetensors")
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [4]}, "weights": "none", "num_classes": 2,
            "input_size": 28, "class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.5] * 3}
    path = tmp_path / "results" / "m" / "model.safetensors"
    save_model(build_model(spec), spec, path)
    path.write_bytes(path.read_bytes()[:-100])  # cut short on disk
    with pytest.raises(CvauditError, match=r"model file .*model\.safetensors is damaged .*snakemake --forcerun"):
        load_model(path)


def test_an_input_size_too_small_for_the_network_names_the_smallest_that_works():
    from cvaudit.model.train_model import check_input_size
    from cvaudit.net.models import build_model
    net = build_model({"arch": "simple_cnn", "arch_options": {"channels": [8, 8, 8, 8, 8]}, "weights": "none",
                       "num_classes": 3, "input_size": 8})
    with pytest.raises(CvauditError, match=r"models\.m\.input_size: 8 px is too small .*smallest input size that works is 32"):
        check_input_size(net, 8, "models.m.input_size")
    check_input_size(net, 32, "models.m.input_size")  # and that size works


def _write_to(path):
    with open(path, "w") as f:
        f.write("x" * 100000)


class _Stage:
    """What Snakemake hands a script: enough of it for runlog.run."""
    def __init__(self, log):
        self.log, self.rule, self.output = [str(log)], "render_report", []


@pytest.mark.parametrize("fail, words", [
    (lambda: _write_to("/dev/full"), "the disk is full"),  # a real ENOSPC from the kernel
    (lambda: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "results/m/report")), "permission denied"),
    (lambda: (_ for _ in ()).throw(OSError(30, "Read-only file system", "results/m/report")), "read-only file system"),
])
def test_a_full_disk_or_a_read_only_folder_is_one_line_with_the_traceback_in_the_log(tmp_path, capsys, fail, words):
    from cvaudit.core.job import run

    with pytest.raises(SystemExit):
        run(lambda sm: fail(), _Stage(tmp_path / "x.log"))
    err = capsys.readouterr().err
    assert "cvaudit error in rule render_report: " in err and words in err and "Traceback" not in err
    assert "Traceback" in (tmp_path / "x.log").read_text()


def test_numbers_yaml_reads_as_text_are_numbers():
    import yaml

    from cvaudit.config import SCHEMA, validate_config
    cfg = yaml.safe_load((SCHEMA.parent / "test.yaml").read_text() + "\nthreads: 1e0\n")
    cfg["models"]["cnn_tiny"]["train"]["lr"] = yaml.safe_load("lr: 1e-3")["lr"]
    assert cfg["models"]["cnn_tiny"]["train"]["lr"] == "1e-3"  # PyYAML (YAML 1.1) reads it as text
    validate_config(cfg)
    assert cfg["models"]["cnn_tiny"]["train"]["lr"] == 0.001 and cfg["threads"] == 1
    cfg["models"]["cnn_tiny"]["train"]["lr"] = "fast"
    with pytest.raises(CvauditError, match=r"models\.cnn_tiny\.train\.lr': 'fast' is not of type 'number'"):
        validate_config(cfg)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_intermediate_is_named_with_the_command_that_rebuilds_it(tmp_path, damage):
    """An array or JSON a stage wrote, cut short by a crash or a full disk, or overwritten: the reader says which
    file and how to rebuild it, never a zip or JSON parser's traceback."""
    from cvaudit.core.files import load_audit_set, load_npz, read_json, save_npz, write_json
    npz, js = tmp_path / "maps.npz", tmp_path / "calibration.json"
    save_npz(npz, {"n": 3}, maps=np.arange(3000, dtype=np.float32))
    write_json(js, {"ece": 0.1, "bins": list(range(50))})
    for f in (npz, js):
        data = f.read_bytes()
        f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not what was written" * 20,
                       "empty": b""}[damage])
    for read, f in ((load_npz, npz), (load_audit_set, npz), (read_json, js)):
        with pytest.raises(CvauditError) as e:
            read(f)
        assert str(f) in str(e.value) and f"snakemake --forcerun {f}" in str(e.value)
