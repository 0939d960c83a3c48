#!/usr/bin/env bash
# Creates the virtualenv with the official Python clients the tests drive (requirements.txt
# beside this file) at $OKOME_PYENV (default ~/.cache/okome/pyenv). Re-running is cheap: it
# reinstalls only when requirements.txt changed. Tests find it through tests/common/python.rs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${OKOME_PYENV:-$HOME/.cache/okome/pyenv}"
stamp="$venv/.requirements"
if [[ -x "$venv/bin/python" ]] && cmp -s "$here/requirements.txt" "$stamp"; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$stamp"
echo "tests/clients: Python clients installed in $venv"
