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
# An empty, migrated database beside the server: a new data folder starts from a copy of it
# (microal/labelstudio/server.py) instead of running Label Studio's migrations, which take 30-50 s
# on 2 cores at every first start. The user and token are still created at that first start.
TEMPLATE="$VENV/microal-empty-database"
# What `label-studio start` does before it serves (label_studio/server.py), and nothing else.
MIGRATE="
import os, sys, django, label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
from django.core.management import call_command
django.setup()
call_command('migrate', '--no-color', verbosity=0)
"
if [ ! -f "$TEMPLATE/label_studio.sqlite3" ]; then
  rm -rf "$TEMPLATE.partial" && mkdir -p "$TEMPLATE.partial"
  echo "label-studio: migrating an empty database for new data folders (once; about a minute)"
  if ! LABEL_STUDIO_BASE_DATA_DIR="$(cd "$TEMPLATE.partial" && pwd)" SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false DJANGO_SETTINGS_MODULE=label_studio.core.settings.label_studio \
    "$VENV/bin/python" -c "$MIGRATE" >"$TEMPLATE.log" 2>&1; then
    cat "$TEMPLATE.log" >&2
    exit 1
  fi
  rm -rf "$TEMPLATE" && mkdir -p "$TEMPLATE"
  mv "$TEMPLATE.partial/label_studio.sqlite3" "$TEMPLATE/" && rm -rf "$TEMPLATE.partial" "$TEMPLATE.log"
fi
# Not `label-studio --version`: that also migrates a database under ~/.local/share and then starts
# a server on 0.0.0.0:8080; importing the package reads the version without side effects.
"$VENV/bin/python" -c "import label_studio; print('label-studio', label_studio.__version__)"
