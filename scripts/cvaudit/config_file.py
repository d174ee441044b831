"""Reading a config file as a person wrote it: a YAML error names the file, line and column; a key given twice is
refused (the Snakefile and tools/check_config.py call this before Snakemake's own reading)."""
from __future__ import annotations

from pathlib import Path

import yaml

from cvaudit import CvauditError


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _strict_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise CvauditError(f"{key_node.start_mark.name}: key '{key}' is given twice, on line {seen[key] + 1} and on "
                               f"line {key_node.start_mark.line + 1}; YAML would keep only the last one silently. "
                               "Merge the two into one.")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def check_config_file(path: str | Path) -> None:
    """Read a config file strictly: a YAML error names the file, line and column and shows the line; a key given
    twice in one mapping names both lines; Snakemake's templating (`__use_yte__`, which evaluates expressions in
    the file when Snakemake reads it, before cvaudit sees it) is refused."""
    p = Path(path)
    text = p.read_text(errors="replace")
    try:
        with open(p, errors="replace") as f:  # the marks then name the file
            data = yaml.load(f, Loader=_StrictLoader) if p.suffix.lower() != ".json" else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise CvauditError(f"{p}: not valid YAML at {where}: {e.problem or e.context}\n    {line}\n    "
                           f"{' ' * (mark.column if mark else 0)}^") from None
    if isinstance(data, dict) and "__use_yte__" in data:
        raise CvauditError(f"{p}: uses Snakemake's YAML templating (__use_yte__), which runs the expressions in the "
                           "file when Snakemake reads it; cvaudit configs are plain settings: write the values out")
