#!/usr/bin/env bash
# Install the real OSCAR peers of tests/interop/test_oscar.py into fixed dirs:
#   Twisted 15.4.0 (the last release shipping twisted.words.protocols.oscar)
#   for pyenv's Python 2.7.18 -> /opt/gateway-peers/tw15
#   aimpyfly 0.1.1 (no deps, plus colorama) for pyenv's Python 3.12.1 -> /opt/gateway-peers/aimpyfly
# Idempotent: does nothing when both import already.
set -euo pipefail
ROOT=${GATEWAY_PEERS:-/opt/gateway-peers}
PYENV_ROOT=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
PY27=$PYENV_ROOT/versions/2.7.18/bin/python
PY312=$PYENV_ROOT/versions/3.12.1/bin/python
mkdir -p "$ROOT"

if [ -x "$PY27" ]; then
    # site.addsitedir, not PYTHONPATH: zope is a namespace package set up by a .pth file.
    check27="import site; site.addsitedir('$ROOT/tw15'); import twisted.words.protocols.oscar"
    if ! "$PY27" -c "$check27" >/dev/null 2>&1; then
        echo "setup-oscar: Twisted 15.4.0 for Python 2.7 into $ROOT/tw15"
        "$PY27" -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --target "$ROOT/tw15" "Twisted==15.4.0" 2>&1 | grep -v -E "WARNING|requires|has requirement" || true
    fi
    "$PY27" -c "$check27"
else
    echo "setup-oscar: no Python 2.7.18 under $PYENV_ROOT; the Twisted 15.4 interop tests will skip"
fi

if [ -x "$PY312" ]; then
    if ! PYTHONPATH="$ROOT/aimpyfly" "$PY312" -c 'import aimpyfly, colorama' >/dev/null 2>&1; then
        echo "setup-oscar: aimpyfly 0.1.1 for Python 3.12 into $ROOT/aimpyfly"
        "$PY312" -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --target "$ROOT/aimpyfly" --no-deps "aimpyfly==0.1.1" "colorama"
    fi
    PYTHONPATH="$ROOT/aimpyfly" "$PY312" -c 'import aimpyfly, colorama'
else
    echo "setup-oscar: no Python 3.12.1 under $PYENV_ROOT; the aimpyfly interop tests will skip"
fi
