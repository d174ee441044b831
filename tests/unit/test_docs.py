"""Docs that cannot rot silently: the generated references match the code, and every path, make target, link,
config snippet, configuration key and tool option the README and docs/ name exists."""
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import REPO


def _docs():
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "config" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.slow
def test_the_generated_references_match_the_code():
    """docs/reference/ (configuration keys, verdicts, methods, presets) is written by tools/make_references.py;
    a key, check or method added without rerunning it fails here."""
    p = subprocess.run([sys.executable, str(REPO / "tools" / "make_references.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_every_path_make_target_and_link_the_docs_name_exists():
    """Files the README and docs/ name in backticks (config/, tools/, scripts/, rules/, tests/, profiles/, envs/,
    docs/), `make` targets, and relative Markdown links."""
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    missing = []
    for doc in _docs():
        text = doc.read_text()
        for path in re.findall(r"`((?:config|tools|scripts|rules|tests|profiles|envs|docs)/[\w./-]+\.\w+)", text):
            if not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
        for target in re.findall(r"(?:`|^\s+)make ([a-z][\w-]*)", text, re.M):  # in code, not prose
            if target not in targets:
                missing.append(f"{doc.name}: make {target}")
        for link in re.findall(r"\]\(([^)#:]+\.md)\)", text):
            if not (doc.parent / link).exists():
                missing.append(f"{doc.name}: link {link}")
    assert not missing, missing


def test_every_config_the_docs_show_is_valid():
    """Each YAML block of the README and docs/ that holds datasets and models passes the schema as written (paths
    aside: they name the reader's own folders)."""
    from cvaudit.config import validate_config
    shown = 0
    for doc in _docs():
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
            cfg = yaml.safe_load(textwrap.dedent(block))
            if isinstance(cfg, dict) and "datasets" in cfg and "models" in cfg:
                validate_config(cfg, REPO / "config" / "schema.yaml")
                shown += 1
    assert shown >= 2


def _schema_child(node: dict, part: str, defs: dict) -> dict | None:
    """The schema of key `part` inside `node`: a named property, or a user-named entry (datasets.NAME, models.*);
    NAME, * or an upper-case word stands for any key. None where the schema has no such key."""
    def deref(n):
        while isinstance(n, dict) and "$ref" in n:
            n = {**defs[n["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in n.items() if k != "$ref"}}
        return n
    node = deref(node)
    for branch in map(deref, [node, *node.get("anyOf", []), *node.get("oneOf", []), *node.get("allOf", [])]):
        props, extra = branch.get("properties", {}), branch.get("additionalProperties")
        if part in props:
            return props[part]
        if isinstance(extra, dict):
            return extra
        if part == "*" or part.isupper():
            return next(iter(props.values()), None)
    return None


def test_every_configuration_key_the_docs_name_exists():
    """`clever_hans.max_area`, `models.*.weights`, `verdicts.ece` ...: each dotted key the README and docs/ name in
    backticks, under a top-level key of config/schema.yaml, is a key of the schema, or a renamed key the config
    check names the replacement of. A key of `summary.json` and a module (`report.checks`) are not config keys."""
    from cvaudit.config import RENAMED
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    tops, named, missing = set(schema["properties"]), 0, []
    for doc in _docs():
        text = doc.read_text()
        for m in re.finditer(r"`([a-z_]+(?:\.(?:[a-z_0-9]+|\*|[A-Z]+))+)(?::[^`]*)?`", text):
            key = m[1]
            if (key.split(".")[0] not in tops or "summary.json" in text[max(0, m.start() - 16):m.start()]
                    or (REPO / "scripts" / "cvaudit" / (key.replace(".", "/") + ".py")).exists()
                    or tuple(key.split(".")) in RENAMED):
                continue
            node = schema
            for part in key.split("."):
                node = _schema_child(node, part, schema["$defs"]) if node is not None else None
            named += 1
            if node is None:
                missing.append(f"{doc.relative_to(REPO)}: {key}")
    assert named > 100 and not missing, missing


@pytest.mark.slow
def test_every_tool_command_the_docs_show_takes_its_options():
    """Each `tools/NAME.py --option ...` the README and docs/ show: the tool answers --help, and every option shown
    is one it lists."""
    shown: dict[str, set] = {}
    for doc in _docs():
        for tool, args in re.findall(r"`(?:\.venv/bin/python )?(tools/\w+\.py)([^`]*)`", doc.read_text()):
            shown.setdefault(tool, set()).update(re.findall(r"(--[\w-]+)", args))
    assert len(shown) >= 8
    for tool, options in sorted(shown.items()):
        p = subprocess.run([sys.executable, str(REPO / tool), "--help"], capture_output=True, text=True, timeout=120,
                           cwd=REPO)
        assert p.returncode == 0 and "usage" in p.stdout.lower(), (tool, p.stderr[-1000:])
        assert not [o for o in options if o not in p.stdout], (tool, options, p.stdout)


def test_the_method_counts_the_docs_give_are_the_registrys():
    """"up to 21 attribution methods", "(default: all 21)": the number of methods a user can list (the registry
    less its floor)."""
    from cvaudit.core import registry
    n = len(registry.METHODS) - 1
    counts = [(doc.name, int(c)) for doc in _docs() for c in
              re.findall(r"up to (\d+) attribution methods|default: all (\d+)\)", doc.read_text()) for c in c if c]
    assert len(counts) >= 2 and all(c == n for _, c in counts), (n, counts)
