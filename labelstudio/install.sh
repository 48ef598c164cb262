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
# Not `label-studio --version`: that also migrates a database under ~/.local/share and then starts
# a server on 0.0.0.0:8080; importing the package reads the version without side effects.
"$VENV/bin/python" -c "import label_studio; print('label-studio', label_studio.__version__)"
