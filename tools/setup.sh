#!/usr/bin/env bash
# Sets up everything cvaudit needs on a fresh Debian machine: the Debian packages (when missing)
# and a virtual environment at .venv with the pinned Python requirements (requirements.txt).
# Idempotent: a second run only checks. Usage: tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Fashion-MNIST (demo data, IDX tests), DejaVu fonts (the report's fonts, in HTML
# and in the PDF WeasyPrint makes with the system's Pango), chromium and poppler-utils (the tests look at
# the reports as a person would: a browser screenshot and the PDF pages as images), slurm-wlm and
# munge (the test that runs the workflow on a real single-node SLURM cluster, tools/slurm_cluster.sh),
# libgs-common (Ghostscript's CMYK ICC profile: the test that CMYK images are read through their profile).
DEBS=(dataset-fashion-mnist fonts-dejavu-core libpango-1.0-0 libpangoft2-1.0-0 chromium poppler-utils slurm-wlm munge
      libgs-common)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cvaudit setup: missing Debian packages: ${missing[*]}" >&2
    echo "  Not root, so cannot install them. Ask an administrator to run:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    echo "  then run this again." >&2
    exit 1
  fi
  echo "cvaudit setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# Python: one virtual environment, pins from requirements.txt (and requirements-nodeps.txt, without dependencies).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "cvaudit setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "cvaudit setup: pip install -r requirements.txt (torch is ~5 GB the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import torch, torchvision, timm, captum, snakemake, weasyprint, torchattacks, statsmodels" \
    || { echo "cvaudit setup: the Python install failed (see above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "cvaudit setup: ready (.venv, $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
