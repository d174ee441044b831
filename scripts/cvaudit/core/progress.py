"""Progress in every job's log: no job stays silent for long.

A stage says what it is doing and, where it knows, how much of it there is (`task`, `advance`); a
heartbeat thread, started for every job by `runlog.run`, writes one line every `interval` seconds:
the current task, how much is done of how much, the elapsed time and, once something is done, the
time left at the rate so far. A stage that never reports still gets "still working ... elapsed" lines,
so a user watching the log can tell a long job from a hung one.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("cvaudit.core.progress")

_lock = threading.Lock()
_state = {"what": None, "done": 0, "total": None, "unit": "", "since": None}


def duration(seconds: float) -> str:
    """`75` -> "1 min 15 s"; `4000` -> "1 h 07 min"."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def task(what: str, total: int | None = None, unit: str = "images") -> None:
    """Start a new piece of work: `what` (words), `total` units of it when known."""
    with _lock:
        _state.update(what=what, done=0, total=total, unit=unit, since=time.monotonic())


def advance(n: int = 1) -> None:
    """`n` more units of the current task are done."""
    with _lock:
        _state["done"] += n


def line(now: float | None = None, started: float | None = None) -> str:
    """The progress line the heartbeat writes (the current task, done of total, elapsed, time left)."""
    now = time.monotonic() if now is None else now
    with _lock:
        s = dict(_state)
    elapsed = f"elapsed {duration(now - started)}" if started is not None else ""
    if s["what"] is None:
        return f"still working ({elapsed})"
    if not s["total"]:
        done = f", {s['done']:,} {s['unit']} done" if s["done"] else ""
        return f"{s['what']}{done} ({elapsed})"
    share = min(1.0, s["done"] / s["total"])
    left = ""
    if s["done"] and s["since"] is not None:
        rate = (now - s["since"]) / s["done"]
        left = f"about {duration(rate * max(0, s['total'] - s['done']))} left for this part"
    extra = "; ".join(x for x in (elapsed, left) if x)
    return f"{s['what']}: {s['done']:,} of {s['total']:,} {s['unit']} ({share:.0%}{'; ' + extra if extra else ''})"


@contextmanager
def heartbeat(interval: float = 30.0, write=None):
    """Write `line()` every `interval` seconds while the block runs (a daemon thread; stops with the block)."""
    write = write or (lambda msg: log.info("progress: %s", msg))
    started = time.monotonic()
    with _lock:
        _state.update(what=None, done=0, total=None, unit="", since=None)
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                write(line(started=started))
            except Exception:  # a closed log must never take the job down
                return
    t = threading.Thread(target=beat, name="cvaudit-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=1.0)
