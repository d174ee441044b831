#!/usr/bin/env python
"""Two torch jobs of two threads each on the same cores, as two pytest-xdist workers' workflow runs are: each job's
time alone and side by side, with OpenMP's default wait policy (threads spin while they wait) and with
OMP_WAIT_POLICY=PASSIVE (they sleep). The job: SimpleCNN training steps on a batch of 32 images of 28 px (the
demo's CNN). Interleaved repetitions, medians.

Usage: .venv/bin/python tools/bench_threads.py [--repeats 3] [--steps 60]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

JOB = """
import sys, time, torch
sys.path.insert(0, {scripts!r})
from cvaudit.net.models import SimpleCNN
torch.set_num_threads(2)
torch.manual_seed(0)
m = SimpleCNN(10)
opt = torch.optim.Adam(m.parameters())
x, y = torch.rand(32, 3, 28, 28), torch.randint(0, 10, (32,))
t = time.perf_counter()
for _ in range({steps}):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
print(time.perf_counter() - t)
"""


def run(code: str, policy: str | None, together: int) -> float:
    """The jobs' median time when `together` copies start at once."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy

    def one(_):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])
    with ThreadPoolExecutor(together) as pool:
        return statistics.median(pool.map(one, range(together)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    code = JOB.format(scripts=str(Path(__file__).resolve().parents[1] / "scripts"), steps=args.steps)
    cases = [(policy, n) for n in (1, 2) for policy in (None, "PASSIVE")]
    times = {c: [] for c in cases}
    t0 = time.time()
    for _ in range(args.repeats):  # interleaved: every case once per round
        for c in cases:
            times[c].append(run(code, *c))
    print(f"{'OMP_WAIT_POLICY':<16} {'jobs at once':>12} {'s per job (median)':>20}")
    for (policy, n), ts in times.items():
        print(f"{policy or '(default)':<16} {n:>12} {statistics.median(ts):>20.2f}")
    print(f"# {args.repeats} rounds, {args.steps} steps per job, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
