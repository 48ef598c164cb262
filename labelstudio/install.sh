#!/usr/bin/env bash
# Label Studio in its own virtual environment (.venv-labelstudio beside the repository's .venv):
# the server pins its own SDK, Django and pyarrow versions, which must not touch microal's.
# microal finds it there (or set MICROAL_LABEL_STUDIO to another label-studio executable).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-labelstudio}
if [ ! -x "$VENV/bin/label-studio" ]; then
  python3.11 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r labelstudio/requirements.txt
fi
"$VENV/bin/label-studio" --version | head -n 1
