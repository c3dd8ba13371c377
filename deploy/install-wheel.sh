#!/usr/bin/env bash
# Build the vault's wheel from this repository and install it into a fresh virtual
# environment at TARGET: the one install step of deploy/Dockerfile, and what
# tests/test_wheel.py runs in CI, so the container installs exactly what CI tested.
#
#   deploy/install-wheel.sh TARGET [PYTHON]      (PYTHON defaults to python3)
#
# TARGET must not exist yet. Only the built wheel and its dependencies from the package
# index go in; nothing from the source tree is importable from TARGET.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 TARGET [PYTHON]" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
target=$1
python=${2:-python3}
if [ -e "$target" ]; then
  echo "install-wheel: $target already exists" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$repo"
"$python" -m venv "$target"
"$target/bin/python" -m pip install --quiet --no-cache-dir "$work"/wheels/clinical_photo_vault-*.whl
# Cheap proof the entry point and the shipped migrations are there.
"$target/bin/vault" --version
"$target/bin/python" -c 'import importlib.resources as r, vault; assert any(r.files("vault").joinpath("migrations").iterdir())'
