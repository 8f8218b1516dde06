#!/usr/bin/env bash
# The API reference of the public door (gateway.plugin, the hooks, the test kit), with pydoctor.
# Warnings fail the build. Output: docs/api/ (or the folder given as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/api}
exec "${PYTHON:-python3}" -m pydoctor \
    --project-name=gateway --project-url=README.rst \
    --docformat=restructuredtext --html-output="$out" -q --warnings-as-errors \
    --privacy="PRIVATE:gateway.*" \
    --privacy="PUBLIC:gateway.plugin" --privacy="PUBLIC:gateway.plugin.*" \
    --privacy="PUBLIC:gateway.hookspecs" --privacy="PUBLIC:gateway.hookspecs.*" \
    --privacy="PUBLIC:gateway.testing" --privacy="PUBLIC:gateway.testing.*" \
    gateway
