"""The run-time estimate against what a finished run measured: per stage family and in total.

    .venv/bin/python tools/bench_estimate.py RUN_DIR CONFIG [--cores 2]

RUN_DIR is the folder a run wrote results/ and benchmarks/ in (Snakemake's --directory); CONFIG its config.
Prints the estimate (cvaudit.estimate, from the config and the machine) beside the jobs' measured wall times
(benchmarks/*/*.tsv), and the ratio. The estimate is meant to be within a factor of 2 per stage and in total.
"""
import argparse
import csv
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cvaudit.config import validate_config  # noqa: E402
from cvaudit.estimate import RULE_STAGE, device_of, estimate  # noqa: E402


def measured(run: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in (run / "benchmarks").rglob("*.tsv"):
        rule = f.stem if f.parent == run / "benchmarks" else f.parent.name  # a one-job rule: benchmarks/RULE.tsv
        with open(f, newline="") as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"), None)
        if rec:
            fam = RULE_STAGE.get(rule, rule)
            out[fam] = out.get(fam, 0.0) + float(rec["s"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("config", type=Path)
    ap.add_argument("--cores", type=int, default=2)
    a = ap.parse_args()
    cfg = validate_config(yaml.safe_load(a.config.read_text()))
    est = estimate(cfg, device_of(cfg), a.cores, cache=a.run / ".snakemake" / "cvaudit" / "pass_seconds.json",
                   results=a.run / "results")
    fam: dict[str, float] = {}
    for r in est["rows"]:
        k = {"data audit": "data"}.get(r["stage"], r["stage"].split(" ")[0])
        fam[k] = fam.get(k, 0.0) + r["seconds"]
    got = measured(a.run)
    print(f"{'stage':<22}{'estimate s':>12}{'measured s':>12}{'ratio':>8}")
    for k in sorted(set(fam) | set(got), key=lambda k: -got.get(k, 0)):
        e, m = fam.get(k), got.get(k)
        ratio = f"{e / m:.2f}" if e and m else "—"
        print(f"{k:<22}{(e or 0):>12.0f}{(m or 0):>12.0f}{ratio:>8}")
    e, m = sum(fam.values()), sum(got.values())
    print(f"{'all jobs':<22}{e:>12.0f}{m:>12.0f}{e / m:>8.2f}")


if __name__ == "__main__":
    main()
