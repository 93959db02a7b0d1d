#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned OpenMMLab stack.
#
# Usage: tools/setup_env.sh [VENV_DIR]   (default: .venv)
#
# The pins and their reasons are in README.md ("Environment"). mmcv 2.1.0 ships as a
# source distribution only; it is built here with its compiled ops (about 20 minutes
# on 2 cores the first time, then pip reuses the cached wheel).
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.mixaq_env_v2"  # v2: pymoo (the ratio search)
LOG_DIR="$VENV/setup-logs"

TORCH_PIN="torch==2.13.0"
SETUPTOOLS_PIN="setuptools>=77,<82"
MMENGINE_PIN="mmengine==0.10.7"
MMCV_PIN="mmcv==2.1.0"
MMDET_PIN="mmdet==3.3.0"
PYMOO_PIN="pymoo==0.6.2"

die() { echo "setup_env: error: $*" >&2; exit 1; }

if [ -f "$STAMP" ]; then
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH; set PYTHON=/path/to/python3.11"
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "3.11" ] || echo "setup_env: warning: tested with Python 3.11, found $pyver" >&2

# mmcv's ops are C++: check the toolchain before a 20-minute build fails deep inside.
missing=()
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("a C++ compiler (g++; Debian: apt-get install g++)")
inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$inc/Python.h" ] || missing+=("the Python headers ($inc/Python.h; Debian: apt-get install python3-dev)")
if [ ${#missing[@]} -gt 0 ]; then
    for m in "${missing[@]}"; do echo "setup_env: missing: $m" >&2; done
    die "cannot build mmcv $MMCV_PIN with its ops without the above"
fi

[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
mkdir -p "$LOG_DIR"
PIP="$VENV/bin/python -m pip"

step() {  # step NAME CMD...: run quietly, show the log tail only on failure
    local name=$1; shift
    echo "setup_env: installing $name"
    if ! "$@" >"$LOG_DIR/$name.log" 2>&1; then
        echo "---- last lines of $LOG_DIR/$name.log ----" >&2
        grep -iE "error|fatal" "$LOG_DIR/$name.log" | tail -n 15 >&2 || true
        tail -n 5 "$LOG_DIR/$name.log" >&2
        die "step '$name' failed (full log: $LOG_DIR/$name.log)"
    fi
}

step torch $PIP install "$TORCH_PIN"
# torch pulls the newest setuptools; 82+ removed pkg_resources (mmcv build, mmengine).
step setuptools $PIP install "$SETUPTOOLS_PIN" wheel ninja
step mmengine $PIP install "$MMENGINE_PIN" "$TORCH_PIN"
# --no-build-isolation: the build must see the installed torch, or mmcv silently
# comes without its compiled ops (mmcv._ext).
echo "setup_env: mmcv is compiled with its ops: ~20 min the first time, then pip reuses the cached wheel"
step mmcv env MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation "$MMCV_PIN" "$TORCH_PIN"
step mmdet $PIP install "$MMDET_PIN" "$MMCV_PIN" "$TORCH_PIN" pycocotools "$SETUPTOOLS_PIN" \
    pytest matplotlib "$PYMOO_PIN"
step project $PIP install --no-build-isolation --no-deps -e .
step check "$VENV/bin/python" -c "import mmcv.ops, mmdet, pycocotools, mixaq_mmdet; from mmcv.ops import RoIAlign; import pymoo"
touch "$STAMP"
echo "setup_env: ready ($VENV)"
