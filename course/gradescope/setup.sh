#!/usr/bin/env bash
# Gradescope autograder setup (runs once, as root, when Gradescope builds the image).
# The autograder zip holds this repository (without solutions/ if you like: the graded tests do
# not need them) with this file and run_autograder at the zip's top level, e.g.
#     cp course/gradescope/setup.sh course/gradescope/run_autograder . && zip -r autograder.zip . -x '.git/*'
# Gradescope unpacks it into /autograder/source.
set -euo pipefail
SOURCE="${AUTOGRADER_ROOT:-/autograder}/source"
PYTHON="${TOYLAB_PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip python3-venv
fi
# torch's CPU build (no CUDA download), then the lab itself with pytest (a runtime dependency)
"$PYTHON" -m pip install -q --disable-pip-version-check --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
"$PYTHON" -m pip install -q --disable-pip-version-check -e "$SOURCE"
