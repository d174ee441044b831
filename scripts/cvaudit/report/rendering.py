"""What every rendered report shares (the model report and the comparison): the Jinja2 environment
(autoescape on) and its filters, the PDF, the package versions and device, the stage timings."""
from __future__ import annotations

import csv
import importlib.metadata as md
import platform
from pathlib import Path

from cvaudit import __version__
from cvaudit.core.files import atomic_path
from cvaudit.core.progress import duration

PACKAGES = ["torch", "torchvision", "timm", "captum", "scikit-learn", "numpy", "snakemake", "jinja2", "weasyprint"]


def read_benchmarks(files: dict) -> list[dict]:
    """Run time, peak memory and CPU time per stage, from Snakemake's benchmark files (missing ones skipped)."""
    rows = []
    for stage, path in files.items():
        try:
            with open(path, newline="") as f:
                rec = next(csv.DictReader(f, delimiter="\t"))
        except (OSError, StopIteration):
            continue

        def num(k):
            try:
                return float(rec.get(k))
            except (TypeError, ValueError):
                return None
        rows.append({"stage": stage, "seconds": num("s"), "max_rss_mb": num("max_rss"), "cpu_seconds": num("cpu_time")})
    return rows


def package_versions() -> dict:
    out = {"python": platform.python_version(), "cvaudit": __version__}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return f"{device} ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else device
    return f"cpu ({platform.processor() or platform.machine()})"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def jinja_env(template: str | Path):
    """Autoescaping environment (class names, file names and config values are text, never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    env = Environment(loader=FileSystemLoader(str(Path(template).parent)), undefined=StrictUndefined,
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    env.filters["toyaml"] = _yaml
    env.filters["breakable"] = breakable
    env.filters["duration"] = duration
    return env


def breakable(name) -> str:
    """A name (escaped) that may wrap only after its separators (_ - : / .), never in the middle of a word."""
    import re

    from markupsafe import Markup, escape
    return Markup(re.sub(r"([_\-:/.])", r"\1<wbr>", str(escape(str(name)))))


def _yaml(value) -> str:
    """Config as compact YAML (lists of numbers on one line), as the user writes it."""
    import yaml
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True).rstrip()


def write_pdf(html: str, out_html, out_pdf) -> None:
    from weasyprint import HTML
    with atomic_path(out_pdf) as tmp:
        HTML(string=html, base_url=str(Path(out_html).parent)).write_pdf(str(tmp))
