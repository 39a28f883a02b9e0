#!/usr/bin/env bash
# Install what Corral needs on a Debian 12 machine (as root) and a project virtualenv.
# Safe to re-run: every step first checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(runsc debootstrap iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "• apt: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "error: run as root to install ${missing[*]}" >&2; exit 1; fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "• python: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.corral-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "• pip: installing corral and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi
