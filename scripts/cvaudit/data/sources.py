"""Dataset sources: which files a dataset is read from, and its labelled candidates.

Sources: imagefolder (path/CLASS/image, or path/SPLIT/CLASS/image with SPLIT train, val or test),
csv (path,label[,split] rows), idx (MNIST-format archives), foolbox_imagenet, lfw_subset. Array
sources (idx, lfw_subset) yield candidates that point into an array; ingestion writes the kept ones
as PNGs. `source_files` is imported when Snakemake parses the workflow (through fingerprint.py), so
everything it uses is the standard library; numpy is imported only to read arrays.
"""
from __future__ import annotations

import csv
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cvaudit import CvauditError

# A user's split: folder names and CSV values (any case) -> our split.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


@dataclass(slots=True)
class Candidate:
    path: str | None  # None: an array image, written by ingestion if kept
    label: str
    split: str | None = None  # the user's split (None: drawn from the content hash)
    where: str = ""  # for messages: "line 7" of a CSV table
    index: int = -1  # array sources: the image's index in the array
    groups: dict | None = None  # the values of the dataset's declared group columns (config key datasets.*.groups)
    reason: str | None = None  # rejected before any read (a nested folder, not a regular file): why


# What operating systems and archivers leave in folders: never a class, never an image, counted and ignored.
SYSTEM_DIRS = {"__macosx", "$recycle.bin", "system volume information", ".trashes", ".spotlight-v100", ".fseventsd",
               "@eadir", "__pycache__"}
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r", ".directory"}


def is_system(name: str) -> bool:
    """A dot-file or -folder, or operating-system debris (__MACOSX, .DS_Store, Thumbs.db, desktop.ini ...)."""
    low = name.lower()
    return low.startswith(".") or low in SYSTEM_DIRS or low in SYSTEM_FILES or low.startswith("._")


def not_regular(path: str) -> str | None:
    """Why `path` is not a regular file to read (following links), or None: devices, FIFOs and sockets would
    block or never end a read, so they are refused before any."""
    import stat as st
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or a broken link: the image check says which
    if st.S_ISREG(mode):
        return None
    kind = ("a directory" if st.S_ISDIR(mode) else "a named pipe (FIFO)" if st.S_ISFIFO(mode) else
            "a socket" if st.S_ISSOCK(mode) else "a device" if st.S_ISCHR(mode) or st.S_ISBLK(mode) else "not a file")
    return f"not a regular file ({kind}); only files are read"


# The group a source offers without a table: idx archives, the file an image came from (Zalando's train or
# t10k file for Fashion-MNIST). A csv source offers every column of its table.
IDX_GROUP = "source_file"


def _check_groups(ds: dict, available: list[str], where: str) -> list[str]:
    groups = list(ds.get("groups") or [])
    missing = [g for g in groups if g not in available]
    if missing:
        have = ", ".join(available) if available else "none"
        raise CvauditError(f"config key datasets.*.groups names {', '.join(repr(g) for g in missing)}, which {where} "
                           f"does not offer (group columns it has: {have}); a csv source offers every column of its "
                           f"table, an idx source '{IDX_GROUP}'")
    return groups


# ----------------------------------------------------------------------------- package data
def foolbox_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise CvauditError("source 'foolbox_imagenet' needs the foolbox package: run `make setup`")
    return Path(spec.origin).parent / "data"


def lfw_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise CvauditError("source 'lfw_subset' needs scikit-image: run `make setup`")
    return Path(spec.origin).parent / "data" / "lfw_subset.npy"


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names that ship with torchvision (unique, so a name is one output)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ----------------------------------------------------------------------------- imagefolder
def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:  # a link loop: listed as a file, which ingestion rejects with the reason
        return False


def _dirs(path: str) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not is_system(e.name) and _is_dir(e))


def folder_layout(root: str | Path) -> tuple[bool, list[str]]:
    """(has split folders, top-level folders). A split layout is root/SPLIT/CLASS/image: every
    top-level folder is a split name (train, val, test, ...) and holds class folders."""
    root = str(root)
    if not os.path.isdir(root):
        raise CvauditError(f"dataset folder {root} does not exist (config key datasets.*.path)")
    top = _dirs(root)
    split = bool(top) and all(d.lower() in SPLIT_NAMES for d in top) and all(_dirs(os.path.join(root, d)) for d in top)
    return split, top


def folder_classes(root: str | Path) -> list[str]:
    """The class folders of an imagefolder (across its split folders, if it has them), sorted."""
    split_layout, top = folder_layout(root)
    if not split_layout:
        return top
    return sorted({c for s in top for c in _dirs(os.path.join(str(root), s))})


def _walk_files(folder: str) -> list[str]:
    """Every file under folder, system files and folders left out, sorted; symbolic links to folders are not
    followed (a link loop would never end)."""
    out = []
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_system(d))
        out.extend(os.path.join(base, f) for f in sorted(files) if not is_system(f))
    return out


def _count_system(folder: str) -> int:
    n = 0
    for base, _, files in os.walk(folder):
        n += sum(1 for f in files) if is_system(os.path.basename(base)) else sum(1 for f in files if is_system(f))
    return n


def folder_listing(root: str | Path, recursive: bool = False) -> dict:
    """Every file under an imagefolder, accounted for: `files` (path, class, the folder's split) to read,
    `rejected` (path, class, reason) for files in nested folders (unless `recursive`, which gives them their
    top-level class) and files outside any class folder, and `ignored`, the count of system files (dot-files,
    __MACOSX, .DS_Store, Thumbs.db, desktop.ini ...). Sorted by folder then name; paths start with the root
    as the config gives it (relative stays relative: a moved project works)."""
    root = str(root)
    split_layout, top = folder_layout(root)
    groups = [(os.path.join(root, s, c), c, SPLIT_NAMES[s.lower()]) for s in top for c in _dirs(os.path.join(root, s))] \
        if split_layout else [(os.path.join(root, c), c, None) for c in top]
    files, rejected = [], []
    ignored = _count_system(root)
    containers = [root] + ([os.path.join(root, s) for s in top] if split_layout else [])
    for folder in containers:  # files beside the class folders belong to no class
        with os.scandir(folder) as it:
            for e in sorted(it, key=lambda e: e.name):
                if not is_system(e.name) and not _is_dir(e):
                    rejected.append((e.path, "", "not in a class folder: move it into the folder of its class"))
    for folder, label, split in groups:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if is_system(e.name):
                continue
            if _is_dir(e) and not e.is_symlink() or _is_dir(e) and recursive:
                inner = _walk_files(e.path)
                if recursive:
                    files.extend((p, label, split) for p in inner)
                else:
                    sub = os.path.relpath(e.path, root)
                    rejected.extend((p, label, f"in a nested folder ({sub}): set the dataset's recursive: true to "
                                              f"take nested folders into their top-level class") for p in inner)
            elif _is_dir(e):  # a link to a folder, not followed
                rejected.append((e.path, label, "a link to a folder (not followed: set recursive: true to read it)"))
            else:
                files.append((e.path, label, split))
    return {"files": files, "rejected": rejected, "ignored": ignored}


def _folder_files(root: str, recursive: bool = False) -> list[tuple[str, str, str | None]]:
    """(path, class, the folder's split) of every file an imagefolder gives to read (see folder_listing)."""
    return folder_listing(root, recursive)["files"]


def listing_candidates(listing: dict) -> list[Candidate]:
    """A folder_listing as candidates: its files (those that are not regular files refused unread) and its
    rejected files with their reasons."""
    return ([Candidate(p, label, split, reason=not_regular(p)) for p, label, split in listing["files"]]
            + [Candidate(p, label, None, reason=why) for p, label, why in listing["rejected"]])


def _folder_candidates(root: str, recursive: bool = False) -> list[Candidate]:
    return listing_candidates(folder_listing(root, recursive))


# ----------------------------------------------------------------------------- csv
def read_table(table: Path) -> list[dict]:
    """The rows of a dataset table: UTF-8, with or without the byte-order mark Excel writes."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise CvauditError(f"{table}: needs a header with columns 'path' and 'label' "
                                   f"(found {reader.fieldnames})")
            rows = [{**r, "_line": reader.line_num} for r in reader]
    except UnicodeDecodeError as e:
        raise CvauditError(f"{table}: not UTF-8 text (byte {e.start}: {e.reason}); save the table as UTF-8 "
                           "(in Excel: CSV UTF-8)") from None
    except OSError as e:
        raise CvauditError(f"cannot read the dataset table {table}: {e.strerror} (config key datasets.*.path)") from None
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]  # a short row: empty cells


def _csv_candidates(ds: dict) -> list[Candidate]:
    table = Path(ds["path"])
    if not table.is_file():
        raise CvauditError(f"dataset table {table} does not exist (config key datasets.*.path)")
    folder = os.path.normpath(table.parent)
    absolute = os.path.abspath(folder)
    out = []
    rows = read_table(table)
    with open(table, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    groups = _check_groups(ds, [c for c in header if c not in ("path", "label", "split")], f"the table {table}")
    for r in rows:
        where = f"line {r['_line']}"
        path = os.path.normpath(os.path.join(folder, r["path"]))  # an absolute path stays as it is
        if not ds.get("allow_outside") and os.path.commonpath([absolute, os.path.abspath(path)]) != absolute:
            raise CvauditError(f"{table} {where}: path '{r['path']}' is outside the table's folder {folder}; "
                               "move the image there, or set datasets.<name>.allow_outside: true if the table "
                               "is meant to point elsewhere")
        split = str(r.get("split", "")).strip()
        if split and split.lower() not in SPLIT_NAMES:
            raise CvauditError(f"{table} {where}: split '{split}' is not train, val or test (an empty cell: "
                               "drawn from the image's content hash)")
        out.append(Candidate(path, str(r["label"]).strip(), SPLIT_NAMES.get(split.lower()), where,
                             groups={g: str(r.get(g, "")).strip() for g in groups} if groups else None))
    return out


# ----------------------------------------------------------------------------- arrays
def idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for img in sorted(Path(folder).glob("*-images-idx3-ubyte.gz")):
        lab = img.with_name(img.name.replace("-images-idx3-ubyte.gz", "-labels-idx1-ubyte.gz"))
        if not lab.exists():
            raise CvauditError(f"IDX images file {img} has no labels file {lab.name} beside it")
        pairs.append((img, lab))
    if not pairs:
        raise CvauditError(f"no *-images-idx3-ubyte.gz files in {folder} (config key datasets.*.path); "
                           "for Fashion-MNIST install the Debian package dataset-fashion-mnist")
    return pairs


def selected_idx_pairs(ds: dict) -> list[tuple[Path, Path]]:
    """The archive pairs of an idx dataset, limited to config key datasets.*.files when it is given."""
    pairs = idx_pairs(Path(ds["path"]))
    want = ds.get("files")
    if not want:
        return pairs
    stem = {img.name.split("-images-idx3-ubyte")[0]: (img, lab) for img, lab in pairs}
    unknown = [f for f in want if f not in stem]
    if unknown:
        raise CvauditError(f"config key datasets.*.files names {', '.join(repr(f) for f in unknown)}, not an archive in "
                           f"{ds['path']} (archives: {', '.join(stem)})")
    return [stem[f] for f in want]


def read_idx(path: Path, ndim: int):
    """An IDX array (MNIST format, gzip-compressed); a damaged archive is named with the fix."""
    import numpy as np

    fix = "restore or re-download it (Fashion-MNIST: apt-get install --reinstall dataset-fashion-mnist)"
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CvauditError(f"IDX archive {path} is damaged ({type(e).__name__}: {e}); {fix}") from None
    if len(data) < 4 + 4 * ndim or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise CvauditError(f"{path} is not an IDX file of {ndim} dimension(s) of bytes (magic {data[:4].hex()}); {fix}")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    need = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != need:
        raise CvauditError(f"IDX archive {path} holds {len(data):,} bytes where its header promises {need:,}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_arrays(ds: dict):
    """(images uint8 [N, H, W], labels int [N], class names, origin) of an array source; origin: (the
    file each run of images came from, the run lengths), or None."""
    import numpy as np

    if ds["source"] == "idx":
        xs, ys, files = [], [], []
        for img, lab in selected_idx_pairs(ds):
            files.append(img.name.split("-images-idx3-ubyte")[0])
            x, y = read_idx(img, 3), read_idx(lab, 1)
            if len(x) != len(y):
                raise CvauditError(f"{img} holds {len(x)} images but {lab} {len(y)} labels; restore the pair")
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
        if ds.get("invert"):
            x = 255 - x
        names = ds.get("class_names") or [str(i) for i in range(int(y.max()) + 1)]
        if len(names) <= int(y.max()):
            raise CvauditError(f"config key datasets.*.class_names lists {len(names)} names but the "
                               f"IDX labels go up to {int(y.max())}")
        return x, y, list(names), (files, [len(v) for v in xs])
    arr = np.load(lfw_file())  # lfw_subset: 100 faces then 100 non-faces, 25x25 floats in [0, 1]
    x = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return (255 - x if ds.get("invert") else x), np.repeat([0, 1], len(arr) // 2), ["face", "non-face"], None


# ----------------------------------------------------------------------------- every source
def candidates(ds: dict, arrays=None) -> list[Candidate]:
    """Every labelled image a dataset offers, before any check. `arrays`: read_arrays(ds), for array sources."""
    src = ds["source"]
    if src in ("imagefolder", "foolbox_imagenet"):
        _check_groups(ds, [], f"the {src} source")
    if src == "imagefolder":
        return _folder_candidates(ds["path"], ds.get("recursive", False))
    if src == "csv":
        return _csv_candidates(ds)
    if src == "foolbox_imagenet":
        cats = imagenet_categories()
        return [Candidate(str(p), cats[int(p.stem.rsplit("_", 1)[1])]) for p in sorted(foolbox_dir().glob("imagenet_*.jpg"))]
    if src in ("idx", "lfw_subset"):
        _, y, names, origin = arrays
        groups = _check_groups(ds, [IDX_GROUP] if origin else [], f"the {src} source")
        if not origin:
            return [Candidate(None, names[int(c)], index=i) for i, c in enumerate(y)]
        # where: the archive and the image's index in it (the manifest's `original`: the same image read by two
        # datasets, e.g. a shifted rendering, is recognised by it)
        where = [f"{f} #{k}" for f, n in zip(*origin) for k in range(n)]
        return [Candidate(None, names[int(c)], where=where[i], index=i,
                          groups={IDX_GROUP: where[i].split(" #")[0]} if groups else None) for i, c in enumerate(y)]
    raise CvauditError(f"unknown dataset source '{src}'")


def source_files(ds: dict) -> list[str]:
    """Every file a dataset is read from, sorted: what its fingerprint hashes."""
    src = ds["source"]
    if src == "imagefolder":  # the files to read and those rejected unread: both are the dataset
        listing = folder_listing(ds["path"], ds.get("recursive", False))
        return sorted([p for p, _, _ in listing["files"]] + [p for p, _, _ in listing["rejected"]])
    if src == "csv":
        return sorted({ds["path"], *(c.path for c in _csv_candidates(ds))})
    if src == "idx":
        return [str(p) for pair in selected_idx_pairs(ds) for p in pair]
    if src == "foolbox_imagenet":
        return sorted(str(p) for p in foolbox_dir().glob("imagenet_*.jpg"))
    if src == "lfw_subset":
        return [str(lfw_file())]
    raise CvauditError(f"unknown dataset source '{src}'")
