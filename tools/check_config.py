"""Check a config file as cvaudit reads it, without Snakemake: YAML syntax (file, line and column), keys given
twice, templating, then every setting against config/schema.yaml (with the preset filled in).

    .venv/bin/python tools/check_config.py my.yaml

Snakemake reads --configfile before cvaudit sees it and reports a syntax error only as "Config file is not
valid JSON or YAML"; this says where. Exit status 0 when the config is valid, 1 with the message otherwise.
"""
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cvaudit import CvauditError  # noqa: E402
from cvaudit.config import validate_config  # noqa: E402
from cvaudit.config_file import check_config_file  # noqa: E402


def merge(into: dict, new: dict) -> None:
    """Several config files merge as Snakemake merges them: mappings key by key, everything else replaced."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def main(paths: list[str]) -> int:
    config: dict = {}
    try:
        for p in paths:
            check_config_file(p)
            merge(config, yaml.safe_load(Path(p).read_text()) or {})
        validate_config(config)
    except CvauditError as e:
        print(f"cvaudit: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cvaudit: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{', '.join(paths)}: valid ({len(config['models'])} model(s), {len(config['datasets'])} dataset(s), "
          f"preset {config['audit']['preset']})")
    return 0


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Usage: " + __doc__.split("\n\n")[1].strip())
    ap.add_argument("configs", nargs="+", metavar="CONFIG", help="config files, merged in order as Snakemake merges them")
    sys.exit(main(ap.parse_args().configs))
