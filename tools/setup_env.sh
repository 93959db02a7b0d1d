#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned OpenMMLab stack.
#
# Usage: tools/setup_env.sh [VENV_DIR]   (default: .venv)
#
# CPU by default. On a machine with an NVIDIA GPU (nvidia-smi on PATH) or with
# MIXAQ_CUDA=1 it installs a CUDA build of torch (TORCH_INDEX_URL selects
# another wheel index) and builds mmcv with its CUDA ops (nvcc needed; the wheel
# is kept in ~/.cache/mixaq_mmdet/ per CUDA version and GPU architecture, since
# pip's own cache would hand back a CPU build), then runs mmcv's ops on the GPU.
# MIXAQ_CUDA=0 forces the CPU environment.
#
# The pins and their reasons are in docs/environment.md. mmcv 2.1.0 ships as a
# source distribution only; it is built here with its compiled ops (about 20 minutes
# on 2 cores the first time, then pip reuses the cached wheel).
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
LOG_DIR="$VENV/setup-logs"

die() { echo "setup_env: error: $*" >&2; exit 1; }

case "${MIXAQ_CUDA:-auto}" in
    auto) if command -v nvidia-smi >/dev/null 2>&1; then CUDA=1; else CUDA=0; fi ;;
    0|1) CUDA=$MIXAQ_CUDA ;;
    *) die "MIXAQ_CUDA must be 0, 1 or unset (auto: nvidia-smi on PATH), got '$MIXAQ_CUDA'" ;;
esac
CPU_STAMP="$VENV/.mixaq_env_v3"  # v2: pymoo (the ratio search); v3: make lint's tools
CUDA_STAMP="$VENV/.mixaq_env_v3_cuda"
if [ "$CUDA" = 1 ]; then STAMP=$CUDA_STAMP; else STAMP=$CPU_STAMP; fi

TORCH_PIN="torch==2.13.0"
SETUPTOOLS_PIN="setuptools>=77,<82"
MMENGINE_PIN="mmengine==0.10.7"
MMCV_PIN="mmcv==2.1.0"
MMDET_PIN="mmdet==3.3.0"
PYMOO_PIN="pymoo==0.6.2"
LINT_PINS="ruff==0.17.6 isort==9.0.2 yapf==0.43.0"

if [ -f "$STAMP" ]; then
    exit 0
fi
if [ "$CUDA" = 1 ] && [ -f "$CPU_STAMP" ]; then
    die "$VENV was built for CPU (mmcv without CUDA ops) but this machine has a GPU: remove $VENV to build the CUDA environment, or set MIXAQ_CUDA=0 to keep the CPU one"
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH; set PYTHON=/path/to/python3.11"
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "3.11" ] || echo "setup_env: warning: tested with Python 3.11, found $pyver" >&2

# mmcv's ops are C++: check the toolchain before a 20-minute build fails deep inside.
missing=()
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("a C++ compiler (g++; Debian: apt-get install g++)")
inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$inc/Python.h" ] || missing+=("the Python headers ($inc/Python.h; Debian: apt-get install python3-dev)")
if [ "$CUDA" = 1 ]; then
    NVCC=${CUDA_HOME:+$CUDA_HOME/bin/}nvcc
    command -v "$NVCC" >/dev/null 2>&1 || missing+=("the CUDA compiler for mmcv's CUDA ops ($NVCC; install the CUDA toolkit matching torch's CUDA and set CUDA_HOME, or MIXAQ_CUDA=0 for CPU)")
fi
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

if [ "$CUDA" = 1 ]; then
    step torch $PIP install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_PIN"
    cuda_info=$("$VENV/bin/python" -c 'import torch; ok = torch.version.cuda and torch.cuda.is_available(); print(f"{torch.version.cuda} " + ";".join(sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})) if ok else "none")')
    [ "$cuda_info" != none ] || die "the installed torch cannot use the GPU (torch.version.cuda or torch.cuda.is_available() is false): set TORCH_INDEX_URL to the wheel index of your CUDA version, or MIXAQ_CUDA=0 for CPU"
    read -r TORCH_CUDA ARCHS <<<"$cuda_info"
else
    step torch $PIP install "$TORCH_PIN"
fi
# torch pulls the newest setuptools; 82+ removed pkg_resources (mmcv build, mmengine).
step setuptools $PIP install "$SETUPTOOLS_PIN" wheel ninja
step mmengine $PIP install "$MMENGINE_PIN" "$TORCH_PIN"
# --no-build-isolation: the build must see the installed torch, or mmcv silently
# comes without its compiled ops (mmcv._ext).
if [ "$CUDA" = 1 ]; then
    WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/mixaq_mmdet/mmcv-2.1.0-cu${TORCH_CUDA}-sm${ARCHS//;/_}"
    if ! ls "$WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
        echo "setup_env: mmcv is compiled with its CUDA ops for CUDA $TORCH_CUDA, GPU arch $ARCHS: ~20-40 min the first time"
        step mmcv-wheel env MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" \
            MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP wheel --no-build-isolation --no-deps \
            --no-cache-dir -w "$WHEELS" "$MMCV_PIN"
    fi
    step mmcv $PIP install --find-links "$WHEELS" "$MMCV_PIN" "$TORCH_PIN"
else
    echo "setup_env: mmcv is compiled with its ops: ~20 min the first time, then pip reuses the cached wheel"
    step mmcv env MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation "$MMCV_PIN" "$TORCH_PIN"
fi
step mmdet $PIP install "$MMDET_PIN" "$MMCV_PIN" "$TORCH_PIN" pycocotools "$SETUPTOOLS_PIN" \
    pytest matplotlib "$PYMOO_PIN" $LINT_PINS
step project $PIP install --no-build-isolation --no-deps -e .
step check "$VENV/bin/python" -c "import mmcv.ops, mmdet, pycocotools, mixaq_mmdet; from mmcv.ops import RoIAlign; import pymoo"
if [ "$CUDA" = 1 ]; then  # the ops must run on the GPU, not only import
    step check-cuda "$VENV/bin/python" -c "from mixaq_mmdet.compat import run_mmcv_ops; run_mmcv_ops('cuda')"
fi
touch "$STAMP"
echo "setup_env: ready ($VENV)"
