"""Glue for entry scripts: log to the rule's log file, progress to it too, clear errors on failure."""
from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from pathlib import Path

from cvaudit import CvauditError
from cvaudit.core import progress
from cvaudit.core.files import write_failure


def _tail(path, n: int = 15) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def where_reports(models: list[str], compare: str | None = "results/compare/report.html",
                  gate: str = "results/gate.json") -> str:
    """The lines a run ends with: where each report is, its overall verdict and any failed stage."""
    import json
    lines = []
    for m in models:
        html, summary = Path(f"results/{m}/report/report.html"), Path(f"results/{m}/report/summary.json")
        if not html.exists():
            continue
        try:
            s = json.loads(summary.read_text())
            failed = s.get("failed_stages", [])
            note = f"overall {s['status']}" + (f"; {len(failed)} stage(s) FAILED: "
                                              + ", ".join(f"{f['rule']}" for f in failed) if failed else "")
        except (OSError, ValueError, KeyError):
            note = "summary missing"
        lines.append(f"  {m:<24} {html}  ({note})")
    if compare and Path(compare).exists():
        lines.append(f"  {'comparison':<24} {compare}")
    if not lines:
        return ""
    try:
        g = json.loads(Path(gate).read_text())
        gate_line = [f"gate (audit.fail_on: {g['fail_on']}): {'passed' if g['passed'] else 'FAILED'}"]
    except (OSError, ValueError, KeyError):
        gate_line = []
    return "\n".join(["cvaudit: reports (HTML; the PDF and summary.json beside each):", *lines, *gate_line])


def interrupted(log_path) -> str:
    """What a run stopped by the user (Ctrl-C) ends with: which jobs had finished, which were cut short, and how to
    resume. Read from Snakemake's own log of the run (a path or a list of them); empty when the run was not
    interrupted."""
    import re
    paths = log_path if isinstance(log_path, (list, tuple)) else [log_path]  # Snakemake hands onerror a list
    try:
        text = "".join(Path(p).read_text(errors="replace") for p in paths)
    except (OSError, TypeError):
        return ""
    if "Terminating processes on user request" not in text:
        return ""
    jobs: dict[str, str] = {}  # jobid -> "rule (wildcards)", in the order they started
    for block in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", text, re.M):
        jobid = re.search(r"^    jobid: (\d+)", block[2], re.M)
        wc = re.search(r"^    wildcards: (.*)$", block[2], re.M)
        if jobid:
            jobs[jobid[1]] = block[1] + (f" ({wc[1]})" if wc else "")
    done = re.findall(r"^Finished jobid: (\d+)", text, re.M)
    total = re.findall(r"^\d+ of (\d+) steps", text, re.M)
    finished = [jobs.get(j, f"job {j}") for j in done]
    cut = [name for j, name in jobs.items() if j not in done and not name.startswith("all")]
    of = f" of {total[-1]}" if total else ""
    lines = [f"cvaudit: interrupted. {len(finished)}{of} job(s) had finished and are kept"
             + (": " + "; ".join(finished) if finished else "") + "."]
    if cut:
        lines.append(f"  Cut short ({len(cut)}, their partial outputs removed): " + "; ".join(cut) + ".")
    lines.append("  To resume, run the same command again: only the jobs not finished run. If Snakemake then says the "
                 "folder is locked (Snakemake itself was killed), run it once with --unlock, then again.")
    return "\n".join(lines)


def name_keys(message: str, dataset: str | None = None, model: str | None = None) -> str:
    """Messages name a config key as datasets.*.path where the code does not know the name; the rule
    does: datasets.leaves.path is what the user searches their config for."""
    if dataset:
        message = message.replace("datasets.*.", f"datasets.{dataset}.").replace("datasets.<name>.", f"datasets.{dataset}.")
    if model:
        message = message.replace("models.*.", f"models.{model}.")
    return message


def known_failure(e: BaseException) -> str | None:
    """One line for a failure the user's machine or files cause (not a bug in cvaudit), else None."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return ("out of memory; lower the batch sizes (models.*.train.batch_size, batch_size) or shard_size, "
                "or give the job more memory (resources mem_mb)")
    if not isinstance(e, OSError):
        return None
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full (or over quota) writing{where}; free space there (the results/ folder of an "
                "earlier run can go: make clean) and rerun the same command")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return (f"cannot write or read{where}: {what}; make the folder writable (or readable), or run the workflow "
                "from a folder you own (snakemake --directory DIR)")
    if e.errno == errno.ENOENT:
        return f"file not found:{where}; it was moved or deleted while the run needed it, restore it and rerun"
    if e.errno == errno.EIO:
        return f"input/output error reading{where}: the disk or network file system failed; check it and rerun"
    return None


def record_failure(sm, error: BaseException, log_path, outputs: list | None = None, rule: str | None = None,
                   wildcards: dict | None = None) -> dict:
    """Write a failure record in place of each output of an optional stage (see io.write_failure), or of those
    `outputs` of it, made by `rule` for `wildcards` (default: the job's)."""
    outputs = list(sm.output) if outputs is None else outputs
    rec = {"rule": rule or getattr(sm, "rule", "?"), "wildcards": wildcards or dict(sm.wildcards.items()),
           "error": f"{type(error).__name__}: {error}" if not isinstance(error, CvauditError) else str(error),
           "log": str(log_path) if log_path else None, "log_tail": _tail(log_path) if log_path else [],
           "outputs": [str(o) for o in outputs]}
    for out in outputs:
        write_failure(out, rec)
    return rec


def part_of(sm, rule: str, wildcards: dict, outputs: list, compute) -> bool:
    """compute(), one of the independent parts of an optional stage's job (a stage's methods in one job): its
    failure becomes failure records in place of that part's `outputs` alone, recorded as the job of `rule` for
    `wildcards` that computes that part alone would record it (the traceback in the log, a line on the console),
    and the job goes on with its next part. True if it worked."""
    try:
        compute()
        return True
    except Exception as e:
        known = known_failure(e)
        if not known and not isinstance(e, CvauditError):
            traceback.print_exc()  # inside run(), stderr is the job's log
        log_path = sm.log[0] if len(sm.log) else None
        rec = record_failure(sm, CvauditError(known) if known else e, log_path, outputs, rule, wildcards)
        logging.getLogger("cvaudit").error(
            "stage %s %s FAILED (%s); the report shows it. After fixing the cause, rerun it with: snakemake "
            "--forcerun %s", rule, ", ".join(f"{k}={v}" for k, v in wildcards.items()), rec["error"], outputs[0])
        return False


def watch_reads(sm):
    """With CVAUDIT_CHECK_READS=1 (the tests set it), record every file the stage opens; the returned
    function raises if the stage read a file under results/ that its rule does not declare (an input, an
    output or a log; the images a declared manifest names, under results/data/*/images|converted, and its
    dataset.json; the
    temporary file an atomic write puts beside an output). A report must be built from exactly the data
    its rule names, or Snakemake cannot know when to rebuild it."""
    if not os.environ.get("CVAUDIT_CHECK_READS"):
        return lambda: None
    files = {os.path.abspath(str(p)) for p in (*sm.input, *sm.output, *sm.log)}
    # a manifest's dataset.json is written by the same job (read_manifest checks the row count against it)
    files |= {os.path.join(os.path.dirname(p), "dataset.json") for p in files if os.path.basename(p) == "manifest.csv"}
    folders = tuple(p + os.sep for p in files)  # a directory() input or output
    out_dirs = {os.path.dirname(os.path.abspath(str(p))) for p in sm.output}
    results = os.path.abspath("results") + os.sep
    opened: list[str] = []

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            opened.append(os.path.abspath(os.fspath(args[0])))

    sys.addaudithook(hook)

    def check():
        undeclared = sorted({p for p in opened if p.startswith(results) and p not in files and not p.startswith(folders)
                             and not (os.path.basename(p).startswith(".") and os.path.dirname(p) in out_dirs)
                             and not _manifest_data(p, results)})
        if undeclared:
            raise CvauditError(f"rule {getattr(sm, 'rule', '?')} read files its rule does not declare: "
                               + ", ".join(os.path.relpath(p) for p in undeclared[:5]))
    return check


def _manifest_data(path: str, results: str) -> bool:
    parts = path[len(results):].split("/")
    return len(parts) >= 4 and parts[0] == "data" and parts[2] in ("images", "converted")


def run(main, sm, optional: bool = False) -> None:
    """Run `main(sm)` with logging and stderr (progress bars) sent to the rule's log file.

    A CvauditError (bad input, bad config) is printed as one clear line to the console and the log;
    any other exception leaves its traceback in the log and points the user there.

    optional=True (the analysis stages after evaluation): a failure does not stop the workflow. The
    stage's outputs become failure records (error and log tail), the report shows the section as
    failed and every other stage and report still runs; `audit.fail_on` decides the exit status.
    """
    log_path = sm.log[0] if len(sm.log) else None
    console = sys.stderr
    handlers: list[logging.Handler] = [logging.StreamHandler(console)]
    log_file = None
    if log_path:
        try:
            log_file = open(log_path, "w", buffering=1)
        except OSError as e:
            print(f"cvaudit error in rule {getattr(sm, 'rule', '?')}: {known_failure(e) or e}", file=console)
            sys.exit(1)
        handlers.append(logging.StreamHandler(log_file))
        sys.stderr = log_file  # tqdm and library warnings go to the log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("weasyprint", "fontTools", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rule = getattr(sm, "rule", "?")
    try:
        check_reads = watch_reads(sm)
        with progress.heartbeat(float(os.environ.get("CVAUDIT_HEARTBEAT_S", 30))):
            main(sm)
        check_reads()
    except KeyboardInterrupt:  # Ctrl-C reaches the jobs too: a line, no traceback; Snakemake says how to resume
        if log_file:
            print(f"cvaudit: rule {rule} interrupted by the user; its outputs are removed and it reruns", file=log_file)
        sys.exit(130)
    except Exception as e:
        known = known_failure(e)
        if known:  # the traceback stays in the log; the console gets what to do
            if log_file:
                traceback.print_exc(file=log_file)
            e = CvauditError(known)
        if isinstance(e, CvauditError):
            wc = dict(getattr(sm, "wildcards", {}).items())
            msg = f"cvaudit error in rule {rule}: {name_keys(str(e), wc.get('dataset'), wc.get('model'))}"
            print(msg, file=console)
            if log_file:
                print(msg, file=log_file)
        elif log_file:
            traceback.print_exc(file=log_file)
            print(f"cvaudit: unexpected error in rule {rule}; traceback in {log_path}", file=console)
        if log_file:
            log_file.flush()
        if optional:
            try:
                rec = record_failure(sm, e, log_path)
            except OSError as again:  # the failure record cannot be written either: a folder gone read-only or full
                print(f"cvaudit error in rule {rule}: {known_failure(again) or again}", file=console)
                sys.exit(1)
            print(f"cvaudit: stage {rule} {rec['wildcards']} FAILED; the report shows it. After fixing the cause, "
                  f"rerun it with: snakemake --forcerun {rec['outputs'][0]}", file=console)
            return
        if isinstance(e, CvauditError):
            sys.exit(1)
        raise
    finally:
        sys.stderr = console
        if log_file:
            log_file.close()
