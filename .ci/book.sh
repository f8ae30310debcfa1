#!/usr/bin/env bash
# Build the toylab textbook (jupyter-book 1.x) offline, warnings as errors.
#
#   .ci/book.sh PYTHON
#
# PYTHON is the interpreter of a virtual environment that already has toylab
# installed with its `book` extra (pip install -e '.[book]'). The script
#   1. installs MathJax 3 from the npm registry into chapters/_build/npm/
#      (skipped when it is already there),
#   2. executes the notebooks missing from the execution cache, in parallel
#      (.ci/book_execute.py), then builds chapters/ into chapters/_build/html with
#      `jupyter-book build -W -n --keep-going` (notebooks executed, cached),
#   3. copies MathJax to chapters/_build/html/_static/mathjax/, which is where
#      `mathjax_path: mathjax/tex-chtml.js` in chapters/_config.yml points.
# Environment knobs:
#   MATHJAX_VERSION  npm version spec (default: 3, i.e. the newest 3.x)
#   BOOK_CLEAN=1     remove the HTML and doctrees first (keeps the notebook cache)
#   BOOK_JOBS=N      notebooks executed at a time before the build (default: all CPUs)
#   TL_PYTHON        the interpreter of the TransformerLens environment (.venv-tl, with
#                    ipykernel): the chapters whose kernelspec is "toylab-tl" run there.
#                    `make book` sets it; without it such a chapter is an error.
#   BOOK_CLEAN=all   also drop the notebook execution cache. The cache is keyed
#                    on the notebooks' code cells only: after a change to the
#                    toylab library, use BOOK_CLEAN=all to re-execute everything.
set -euo pipefail

usage() { echo "usage: $0 PYTHON   (a venv interpreter with toylab[book] installed)" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
PYTHON=$1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BOOK="$ROOT/chapters"
BUILD="$BOOK/_build"
HTML="$BUILD/html"
NPM_PREFIX="$BUILD/npm"
MATHJAX_VERSION=${MATHJAX_VERSION:-3}

if [[ ! -x "$PYTHON" ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: '$PYTHON' is not an executable python interpreter" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import jupyter_book, ipykernel, toylab' >/dev/null 2>&1; then
    echo "error: jupyter-book, ipykernel or toylab is not importable by $PYTHON." >&2
    echo "       Install the book extra first:  $PYTHON -m pip install -e '$ROOT[book]'" >&2
    exit 1
fi
JB_VERSION=$("$PYTHON" -c 'import jupyter_book; print(jupyter_book.__version__)')
case "$JB_VERSION" in
    1.*) ;;
    *) echo "error: jupyter-book $JB_VERSION found; the book needs jupyter-book 1.x (>=1.0,<2): 2.x cannot build offline" >&2
       exit 1 ;;
esac
# jupyter-book's console script lives next to the interpreter.
JB="$(dirname "$PYTHON")/jupyter-book"
[[ -x "$JB" ]] || JB=""

# --- 1. MathJax from the npm registry (idempotent) --------------------------
MATHJAX_SRC="$NPM_PREFIX/node_modules/mathjax/es5"
if [[ -f "$MATHJAX_SRC/tex-chtml.js" ]]; then
    echo "== MathJax already installed in $NPM_PREFIX"
else
    if ! command -v npm >/dev/null 2>&1; then
        echo "error: npm is needed to install MathJax (apt-get install -y npm)" >&2
        exit 1
    fi
    echo "== installing mathjax@$MATHJAX_VERSION from the npm registry into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "mathjax@$MATHJAX_VERSION"
    [[ -f "$MATHJAX_SRC/tex-chtml.js" ]] || { echo "error: npm did not install $MATHJAX_SRC/tex-chtml.js" >&2; exit 1; }
fi
MATHJAX_INSTALLED=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$NPM_PREFIX/node_modules/mathjax/package.json" | head -n1)
echo "== MathJax $MATHJAX_INSTALLED"

# --- 2. build -----------------------------------------------------------------
case "${BOOK_CLEAN:-0}" in
    0) ;;
    1) echo "== BOOK_CLEAN=1: removing $HTML and $BUILD/.doctrees (notebook cache kept)"
       rm -rf "$HTML" "$BUILD/.doctrees" ;;
    all) echo "== BOOK_CLEAN=all: removing $HTML, doctrees and the notebook execution cache"
       rm -rf "$HTML" "$BUILD/.doctrees" "$BUILD/.jupyter_cache" "$BUILD/jupyter_execute" ;;
    *) echo "error: BOOK_CLEAN must be 0, 1 or all" >&2; exit 2 ;;
esac
# Notebooks must run in PYTHON's environment (where toylab is installed), not in
# whatever "python3" kernelspec the user or the system has registered: give the
# build its own Jupyter data dir, searched first, holding a python3 kernelspec
# that points at PYTHON.
export JUPYTER_DATA_DIR="$BUILD/jupyter_data"
"$PYTHON" -m ipykernel install --user --name python3 --display-name "Python 3 (toylab)" >/dev/null
# The chapters that need TransformerLens name the kernel "toylab-tl": it runs TL_PYTHON.
TL_CHAPTERS=$(grep -l '"name": "toylab-tl"' "$BOOK"/*.ipynb || true)
if [[ -n "$TL_CHAPTERS" ]]; then
    if [[ -z "${TL_PYTHON:-}" ]] || ! "$TL_PYTHON" -c 'import importlib.util as u, ipykernel, toylab
assert u.find_spec("transformer_lens")' >/dev/null 2>&1; then
        echo "error: $(echo $TL_CHAPTERS | xargs -n1 basename | tr '\n' ' ')need the TransformerLens kernel:" >&2
        echo "       set TL_PYTHON to the .venv-tl interpreter (make .venv-tl/.installed; make book does both)" >&2
        exit 1
    fi
    "$TL_PYTHON" -m ipykernel install --user --name toylab-tl \
        --display-name "Python 3 (toylab + TransformerLens)" >/dev/null
fi
start=$(date +%s)
# the notebooks that the cache lacks, executed in parallel (BOOK_JOBS at a time, default: all CPUs);
# the build below then takes them from the cache (see .ci/book_execute.py)
"$PYTHON" "$ROOT/.ci/book_execute.py" "$BOOK" ${BOOK_JOBS:-}
echo "== jupyter-book $JB_VERSION: building $BOOK (notebook kernel: $PYTHON)"
if [[ -n "$JB" ]]; then
    "$JB" build "$BOOK" --builder html -W -n --keep-going
else
    "$PYTHON" -m jupyter_book.cli.main build "$BOOK" --builder html -W -n --keep-going
fi
echo "== build took $(( $(date +%s) - start )) s"

# --- 3. MathJax into the site -------------------------------------------------
# mathjax_path is relative, so Sphinx emits <script src="_static/mathjax/tex-chtml.js">.
DEST="$HTML/_static/mathjax"
rm -rf "$DEST"
mkdir -p "$DEST"
cp -R "$MATHJAX_SRC/." "$DEST/"
[[ -f "$DEST/tex-chtml.js" ]] || { echo "error: $DEST/tex-chtml.js missing after copy" >&2; exit 1; }

# A last guard: no page may load a script from the web.
if grep -rlE '<script[^>]+src="(https?:)?//' "$HTML" --include='*.html' >/dev/null 2>&1; then
    echo "error: built HTML loads a script from the web:" >&2
    grep -rnoE '<script[^>]+src="(https?:)?//[^"]*"' "$HTML" --include='*.html' | head -n 20 >&2 || true
    exit 1
fi

echo "== the book is at $HTML/index.html"
