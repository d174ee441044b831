#!/usr/bin/env python3
"""Compare every number two demo runs wrote, to show that a refactor moved none of them.

    tools/compare_results.py BEFORE_RESULTS AFTER_RESULTS [--rename OLD=NEW ...] [--tol 0]

Reads every ``*.json`` under both ``results/`` folders (the reports' summary.json, the metrics,
calibration, invariance and the comparison) and lists each value that differs, is missing or is
new. What a run cannot repeat is skipped: the time stamps, stage timings and memory, package
versions. ``--rename`` maps a key renamed on purpose (``robustness/randomisation=robustness/x``
renames that path in BEFORE). Exit status 0 when nothing differs, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# keys whose values a second run cannot repeat (time, memory, versions, where it ran)
VOLATILE = {"generated", "stage_runs", "packages", "seconds", "max_rss_mb", "cpu_seconds",
            "wall_seconds", "device", "timings", "benchmarks", "mtime_ns",
            "extra_seconds"}  # what a settling run would cost: from the measured job times


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Every leaf of a JSON document, keyed by its slash-separated path."""
    out: dict[str, object] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key in VOLATILE:
                continue
            sep = "" if not prefix or prefix.endswith(":") else "/"
            out.update(flatten(item, f"{prefix}{sep}{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def load_tree(root: Path) -> dict[str, object]:
    leaves: dict[str, object] = {}
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        leaves.update(flatten(json.loads(path.read_text()), rel + ":"))
    return leaves


def same(a, b, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b if tol == 0 else abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


def compare(before: dict, after: dict, tol: float) -> list[str]:
    """A line per value that differs; a file only one side has is one line."""
    lines = []
    files = lambda leaves: {k.split(":", 1)[0] for k in leaves}  # noqa: E731
    only_after, only_before = files(after) - files(before), files(before) - files(after)
    lines += [f"new file      {f}" for f in sorted(only_after)]
    lines += [f"missing file  {f}" for f in sorted(only_before)]
    before = {k: v for k, v in before.items() if k.split(":", 1)[0] not in only_before}
    after = {k: v for k, v in after.items() if k.split(":", 1)[0] not in only_after}
    for key in sorted(set(before) | set(after)):
        if key not in after:
            lines.append(f"missing  {key} (was {before[key]!r})")
        elif key not in before:
            lines.append(f"new      {key} = {after[key]!r}")
        elif not same(before[key], after[key], tol):
            lines.append(f"changed  {key}: {before[key]!r} -> {after[key]!r}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="a key renamed on purpose: OLD in BEFORE's paths reads as NEW")
    parser.add_argument("--tol", type=float, default=0.0,
                        help="relative tolerance for numbers (default 0: identical)")
    args = parser.parse_args(argv)
    before, after = load_tree(args.before), load_tree(args.after)
    for pair in args.rename:
        old, _, new = pair.partition("=")
        before = {k.replace(old, new): v for k, v in before.items()}
    lines = compare(before, after, args.tol)
    print("\n".join(lines) if lines else
          f"identical: {len(before)} values in {len(list(args.before.rglob('*.json')))} files")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
