"""Content fingerprints of dataset sources, so that Snakemake reruns ingestion when the data change.

The ingest rule's one input is results/data/{dataset}/source.json: the number of files, their bytes
and a sha256 over the sorted (path, content sha256) pairs of every file the source is read from. It
is rewritten only when that changes, so a touch, a copy or a restore that keeps the content reruns
nothing, while a changed, new or removed file reruns ingestion and its dependents. No image path
reaches Snakemake (a million inputs cost it minutes and gigabytes; `<unk>` is a pattern to it).

Content hashes are cached by (path, size, and a stamp of the modification time, the status-change time and
the inode) in results/data/{dataset}/hashes.sqlite: only new, touched or rewritten files are read again. This module is imported when Snakemake parses the
workflow, so it uses the standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cvaudit import CvauditError
from cvaudit.core.files import sha256_file
from cvaudit.data.sources import source_files


class HashCache:
    """sha256 of files, remembered by (path, size, change_stamp) in a SQLite file. A cache that cannot be
    opened (a read-only folder, a file system without locks) is left out: everything is hashed."""

    def __init__(self, path: str | Path | None):
        self.db = None
        if path is None:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=60)
            self.db.execute("CREATE TABLE IF NOT EXISTS h (path TEXT PRIMARY KEY, size INTEGER, "
                            "mtime INTEGER, sha256 TEXT)")
        except (sqlite3.Error, OSError):
            self.db = None

    def lookup(self) -> dict[str, tuple[int, int, str]]:
        if self.db is None:
            return {}
        try:
            return {p: (s, m, h) for p, s, m, h in self.db.execute("SELECT path, size, mtime, sha256 FROM h")}
        except sqlite3.Error:
            return {}

    def store(self, rows: list[tuple[str, int, int, str]]) -> None:
        if self.db is None or not rows:
            return
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO h VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error:
            pass


def stat_all(paths: list[str]) -> dict[str, tuple[int, int] | None]:
    """{path: (size, change_stamp)}, None for a file that is missing or cannot be read, and for anything that is
    not a regular file once links are followed (a device or a FIFO would block or never end a read)."""
    import stat
    out: dict[str, tuple[int, int] | None] = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[p] = (st.st_size, change_stamp(st)) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            out[p] = None
    return out


def change_stamp(st: os.stat_result) -> int:
    """One integer for a file's modification time, status-change time and inode. The status-change time moves
    whenever the content is written and cannot be set back (utime moves it too), so content replaced with its
    size and modification time restored is read again; a touch or a copy is read again too, and its unchanged
    content reruns nothing."""
    key = f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=7).digest(), "big")


def content_hashes(paths: list[str], cache: HashCache | None = None, workers: int = 8,
                   progress: str | None = None, stats: dict | None = None) -> dict[str, str | None]:
    """{path: sha256} for each path (None: the file is missing or unreadable, which ingestion reports).
    Only files whose size or modification time differ from the cache's record are read."""
    stats = stat_all(paths) if stats is None else stats
    known = cache.lookup() if cache else {}
    out: dict[str, str | None] = {}
    todo: list[tuple[str, int, int]] = []
    for p in paths:
        st = stats[p]
        if st is None:
            out[p] = None
            continue
        rec = known.get(p)
        if rec and rec[0] == st[0] and rec[1] == st[1]:
            out[p] = rec[2]
        else:
            todo.append((p, st[0], st[1]))
    del known
    if not todo:
        return out

    def one(item):
        try:
            return sha256_file(item[0])
        except OSError:
            return None

    start, step = time.monotonic(), 20000
    with ThreadPoolExecutor(workers) as pool:  # file reads and hashlib release the GIL
        for lo in range(0, len(todo), step):  # in batches: a million pending futures would cost gigabytes
            batch = todo[lo:lo + step]
            fresh = []
            for item, digest in zip(batch, pool.map(one, batch)):
                out[item[0]] = digest
                if digest is not None:
                    fresh.append((item[0], item[1], item[2], digest))
            if cache:
                cache.store(fresh)
            done = lo + len(batch)
            if progress and len(todo) >= 5000 and (done % 100000 == 0 or done == len(todo)):
                print(f"cvaudit: {progress}: hashed {done:,} of {len(todo):,} new or changed files "
                      f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
    return out


def _digest(lines) -> str:
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def fingerprint(ds: dict, cache_path: str | Path | None = None, name: str = "") -> dict:
    """{files, bytes, sha256} of a dataset's source content (see the module docstring).

    When every file's path, size and modification time are those of the last call (recorded beside
    the cache), the last fingerprint is returned without reading the cache: listing and stat-ing the
    files is then all the work."""
    files = source_files(ds)
    stats = stat_all(files)
    listing = _digest(f"{p}\0{st[0]}\0{st[1]}\n" if st else f"{p}\0-\n" for p, st in stats.items())
    memo = Path(cache_path).with_name("source.stat.json") if cache_path else None
    if memo is not None:
        try:
            last = json.loads(memo.read_text())
            if last["listing"] == listing:
                return last["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    hashes = content_hashes(files, HashCache(cache_path), progress=f"dataset '{name}'" if name else None, stats=stats)
    base = ds.get("path") or "/"  # the dataset's folder (a table's folder), spelled as its paths start
    base = os.path.normpath(base if ds["source"] != "csv" else os.path.dirname(base) or ".").rstrip("/") + "/"
    # paths relative to the dataset's folder: a moved copy has the same fingerprint
    fp = {"source": ds["source"], "path": ds.get("path"), "files": len(files),
          "bytes": sum(st[0] for st in stats.values() if st),
          "sha256": _digest(f"{p[len(base):] if p.startswith(base) else p}\0{hashes[p] or 'missing'}\n" for p in files)}
    if memo is not None:
        try:
            memo.write_text(json.dumps({"listing": listing, "fingerprint": fp}) + "\n")
        except OSError:
            pass
    return fp


def write_fingerprint(ds: dict, name: str, out: str | Path) -> str:
    """Write the fingerprint to `out` only when it changed (its modification time is the data's)."""
    out = Path(out)
    fp = fingerprint(ds, out.parent / "hashes.sqlite", name)
    text = json.dumps(fp, indent=2) + "\n"
    try:
        if out.read_text() == text:
            return str(out)
    except OSError:
        pass
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(text)
        ingested = _ingested(out.parent / "dataset.json")
        if ingested and ingested.get("sha256") == fp["sha256"]:  # back to the data last ingested (a file added,
            os.utime(tmp, ns=(ingested["mtime_ns"], ingested["mtime_ns"]))  # then removed): its time, no rerun
        os.replace(tmp, out)
    except OSError as e:
        raise CvauditError(f"cannot write {out}: {e.strerror}; the results folder must be writable") from None
    return str(out)


def _ingested(info_path: Path) -> dict | None:
    try:
        return json.loads(info_path.read_text()).get("source_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def ingested_stamp(fingerprint_path: str | Path | None) -> dict | None:
    """What ingestion records of the fingerprint it ran on (dataset.json's source_fingerprint)."""
    if not fingerprint_path:
        return None
    p = Path(fingerprint_path)
    return {"sha256": json.loads(p.read_text())["sha256"], "mtime_ns": p.stat().st_mtime_ns}
