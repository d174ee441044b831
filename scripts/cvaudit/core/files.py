"""Small file helpers: atomic writes (temp name, then rename) and hashing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


FAILED_KEY = "cvaudit_failed"  # a stage that failed writes {FAILED_KEY: record} as its output (runlog.run)


@contextlib.contextmanager
def intact(path: str | Path):
    """Reading an intermediate a stage wrote: a truncated, damaged or foreign file (a crash, a full disk, a
    hand edit) is named, with the command that rebuilds it, instead of the parser's traceback."""
    import zipfile
    try:
        yield
    except (zipfile.BadZipFile, EOFError, json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError) as e:
        from cvaudit import CvauditError
        raise CvauditError(f"{path} is damaged or incomplete ({type(e).__name__}: {e}); rebuild it and what "
                           f"depends on it: snakemake --forcerun {path} (with your usual --configfile)") from None


def read_json(path: str | Path):
    with intact(path):
        obj = json.loads(Path(path).read_text())
    if isinstance(obj, dict) and FAILED_KEY in obj:
        raise_failed(path, obj[FAILED_KEY])
    return obj


def raise_failed(path, rec: dict):
    from cvaudit import CvauditError
    raise CvauditError(f"input {path} is the record of a failed stage ({rec.get('rule')}: {rec.get('error')}); "
                       f"see {rec.get('log')}, fix the cause and rerun it with: snakemake --forcerun {path}")


def stage_failure(path: str | Path) -> dict | None:
    """The failure record a failed stage left as its output, or None when the stage succeeded."""
    path = str(path)
    if path.endswith(".json"):
        obj = json.loads(Path(path).read_text())
        return obj.get(FAILED_KEY) if isinstance(obj, dict) else None
    if path.endswith(".npz"):
        import numpy as np
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"])).get(FAILED_KEY) if "meta" in z.files else None
    return None


def write_failure(path: str | Path, rec: dict) -> None:
    """Stand-in output of a failed stage: the report shows it, downstream readers raise a clear error."""
    if str(path).endswith(".npz"):
        save_npz(path, {FAILED_KEY: rec})
    else:
        write_json(path, {FAILED_KEY: rec})


def _jsonable(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_npz(path: str | Path, meta: dict, **arrays) -> None:
    """Arrays plus a JSON `meta` record in one compressed .npz, written atomically (no pickles)."""
    import numpy as np
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(meta, default=_jsonable)), **arrays)


def load_npz(path: str | Path, keys=None) -> dict:
    """The arrays of a save_npz file (only `keys`, when given: the others are not read), and its meta
    under "meta"."""
    import numpy as np
    with intact(path), np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if FAILED_KEY in meta:
            raise_failed(path, meta[FAILED_KEY])
        out = {k: z[k] for k in z.files if k != "meta" and (keys is None or k in keys)}
        out["meta"] = meta
    return out


def load_audit_set(path: str | Path) -> dict:
    """The evaluate stage's audit set (results/{model}/eval/audit_set.npz): images, targets, preds, ..."""
    import numpy as np
    with intact(path), np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_history(path: str | Path) -> list[dict]:
    """The train stage's history.csv: one row per epoch, numbers as floats."""
    import csv
    with open(path, newline="") as f:
        return [{k: (v if k == "phase" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def unwritable_folders(roots=("results", "logs", "benchmarks"), limit: int = 5) -> list[tuple[str, str]]:
    """Folders of a run that a job could not write in: every existing folder under `roots` (not following
    links), and for a root that does not exist yet the folder it would be made in. Each is probed by
    creating and removing a file, which is what a job does (permission bits alone miss an immutable or a
    read-only mounted folder, and say nothing for root). Returns up to `limit` (folder, reason) pairs."""
    bad: list[tuple[str, str]] = []

    def probe(folder: str) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".cvaudit-write-probe-")
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            bad.append((folder, e.strerror or str(e)))

    for root in roots:
        if not os.path.isdir(root):
            probe(os.path.dirname(os.path.abspath(root)))
            continue
        for folder, _, _ in os.walk(root):
            probe(folder)
            if len(bad) >= limit:
                return bad
    return list(dict.fromkeys(bad))[:limit]
