#!/usr/bin/env bash
# Install what Corral needs on a Debian 12 machine (as root) and a project virtualenv.
# Safe to re-run: every step first checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(runsc debootstrap iproute2 python3-venv chromium qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs util-linux bubblewrap)
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

# The FinOps focus-validator (used by the billing tests) needs Python >= 3.12 and pins
# numpy < 2, so it lives in its own virtualenv. Skipped, with a note, when no such
# interpreter exists (Debian 12 ships 3.11).
if [ ! -x .venv/focus/bin/focus-validator ]; then
  py312=""
  candidates=(python3.13 python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    for d in "$(pyenv root)"/versions/3.1[2-9]*; do
      [ -x "$d/bin/python3" ] && candidates+=("$d/bin/python3")
    done
  fi
  for c in "${candidates[@]}"; do
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      py312="$c"; break
    fi
  done
  if [ -n "$py312" ]; then
    echo "• focus-validator: installing into .venv/focus"
    "$py312" -m venv .venv/focus
    .venv/focus/bin/pip install -q "focus-validator==2.2.1" "pyarrow<23"
  else
    echo "• focus-validator: no Python >= 3.12 found; the FOCUS validation tests will skip"
  fi
fi
