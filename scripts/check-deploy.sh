#!/usr/bin/env bash
# Offline checks of deploy/ (scripts/check-deploy.py says which): the tools come from PyPI into
# a virtual environment under target/, made once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/deploy-check
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        kubernetes-validate==1.37.0 jsonschema pyyaml
fi
if ! ls "$VENV"/docker_compose-*.whl >/dev/null 2>&1; then
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$VENV" docker-compose==1.29.2
fi
"$VENV/bin/python" scripts/check-deploy.py "$VENV"
# Where a Docker engine with the compose plugin exists, it checks the file too.
if docker compose version >/dev/null 2>&1; then
    docker compose -f deploy/compose/compose.yaml config -q
    echo "docker compose config: ok"
else
    echo "docker compose is not available here: the compose file was checked against its schema only"
fi
