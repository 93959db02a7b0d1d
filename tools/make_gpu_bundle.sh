#!/usr/bin/env bash
# Collect into one folder what tools/gpu_check.sh needs on a borrowed GPU machine
# that has no network and no package registry (Python 3.12, torch 2.11+cu130,
# Triton, nvcc; see IMAGE_PACKAGES below): wheels for CPython 3.12 manylinux
# x86_64 of mmengine, mmdet, pycocotools, pymoo and the dependencies the image
# lacks; mmcv 2.1.0's source distribution (its ops are compiled there, for that
# card only); this project as a wheel; the repository's tests/, benchmarks/,
# configs/ and tools/ as a tarball; gpu_check.sh; MANIFEST.txt (each file, its
# size). The machines' device tool carries 64 MiB, so the folder must stay under
# BUNDLE_LIMIT_MIB (default 60) or the script fails.
#
# Usage: tools/make_gpu_bundle.sh [--dry-run] OUT      (make gpu-bundle: OUT=work_dirs/gpu_bundle)
#   --dry-run   download nothing: only the project wheel, the tarball and
#               gpu_check.sh, what `gpu_check.sh --dry-run` needs on CPU.
# Env: PYTHON (default .venv/bin/python) runs pip; downloads need pip's index.
set -euo pipefail

die() { echo "make_gpu_bundle: error: $*" >&2; exit 1; }

DRY_RUN=0
OUT=
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg' (options: --dry-run)" ;;
        *) [ -z "$OUT" ] || die "one OUT folder expected, got '$OUT' and '$arg'"; OUT=$arg ;;
    esac
done
[ -n "$OUT" ] || die "usage: tools/make_gpu_bundle.sh [--dry-run] OUT"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 ||
    die "PYTHON='$PYTHON' is not an executable (run make env first, or set PYTHON)"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
LIMIT_MIB=${BUNDLE_LIMIT_MIB:-60}
[[ "$LIMIT_MIB" =~ ^[0-9]+$ ]] ||
    die "BUNDLE_LIMIT_MIB must be a whole number of MiB, got '$LIMIT_MIB'"

# The GPU machines' target and what must be carried.
PY_TARGET=(--python-version 3.12 --implementation cp --platform manylinux2014_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# As tools/setup_env.sh pins them. setuptools: the image has one, but mmcv
# 2.1.0's setup.py imports pkg_resources, which setuptools 82 removed.
REQUIREMENTS=("mmengine==0.10.7" "mmdet==3.3.0" "pycocotools" "pymoo==0.6.2" "setuptools>=77,<82")
MMCV_PIN="mmcv==2.1.0"
# Python packages the GPU image ('cuda') already holds, as the device tool's notes
# list them (KINDS.md, read on a machine 2026-11-17): never carried. Except
# setuptools, left out here (see REQUIREMENTS); plus opencv-python, whose cv2 the
# image's opencv-python-headless provides.
IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp opencv-python"

# OUT is emptied first: refuse a folder that is not an earlier bundle.
if [ -e "$OUT" ]; then
    [ -d "$OUT" ] || die "OUT='$OUT' exists and is not a folder"
    if [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/MANIFEST.txt" ] && [ ! -f "$OUT/.gpu_bundle" ]; then
        die "OUT='$OUT' is a non-empty folder that is not a bundle (no MANIFEST.txt): not emptied"
    fi
    rm -rf "$OUT"
fi
mkdir -p "$OUT/wheels"
touch "$OUT/.gpu_bundle"  # an unfinished bundle is still ours to empty
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. This project as a wheel, built from a copy so that no build/ lands in the repo.
echo "make_gpu_bundle: the project wheel"
mkdir -p "$TMP/project"
cp setup.py setup.cfg "$TMP/project/"
tar -cf - --exclude=__pycache__ --exclude='*.pyc' mixaq_mmdet | tar -xf - -C "$TMP/project"
logged() {  # logged NAME CMD...: CMD's output to $TMP/NAME.log, its tail shown if it fails
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 || { tail -n 20 "$TMP/$name.log" >&2; return 1; }
}
logged project "${PIP[@]}" wheel --no-deps --no-build-isolation --no-index -w "$OUT/wheels" \
    "$TMP/project" || die "building the project wheel failed"

# 2. The repository's tests, benchmarks, configs and tools (the package comes as the wheel).
echo "make_gpu_bundle: repo.tar.gz"
tar -czf "$OUT/repo.tar.gz" --exclude=__pycache__ --exclude='*.pyc' --exclude=.pytest_cache \
    tests benchmarks configs tools pytest.ini setup.cfg
cp tools/gpu_check.sh "$OUT/gpu_check.sh"
chmod +x "$OUT/gpu_check.sh"

if [ "$DRY_RUN" = 0 ]; then
    # 3. Resolve the stack for the GPU machine's Python, then download only what
    # the image lacks, each pinned to the resolved version, without dependencies.
    echo "make_gpu_bundle: resolving ${REQUIREMENTS[*]} for CPython 3.12 manylinux x86_64"
    logged resolve "${PIP[@]}" install --dry-run --ignore-installed --target "$TMP/resolve" \
        --report "$TMP/report.json" --only-binary=:all: "${PY_TARGET[@]}" "${REQUIREMENTS[@]}" ||
        die "resolving the stack failed (is pip's index reachable?)"
    mapfile -t PINS < <("$PYTHON" - "$TMP/report.json" "$IMAGE_PACKAGES" <<'EOF'
import json, re, sys
image = {re.sub(r'[-_.]+', '-', n).lower() for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))['install']:
    name, version = item['metadata']['name'], item['metadata']['version']
    if re.sub(r'[-_.]+', '-', name).lower() not in image:
        print(f'{name}=={version}')
EOF
)
    [ ${#PINS[@]} -gt 0 ] || die "the resolution left nothing to carry: is IMAGE_PACKAGES right?"
    echo "make_gpu_bundle: downloading ${PINS[*]}"
    logged download "${PIP[@]}" download --no-deps --only-binary=:all: "${PY_TARGET[@]}" \
        -d "$OUT/wheels" "${PINS[@]}" || die "downloading the wheels failed"
    echo "make_gpu_bundle: $MMCV_PIN's source distribution"
    mkdir -p "$OUT/sdist"
    logged sdist "${PIP[@]}" download --no-binary :all: --no-deps -d "$OUT/sdist" "$MMCV_PIN" ||
        die "downloading $MMCV_PIN's sdist failed"
    ls "$OUT"/sdist/mmcv-2.1.0.tar.gz >/dev/null 2>&1 ||
        die "no sdist/mmcv-2.1.0.tar.gz after the download: $(ls "$OUT/sdist")"
    # Every wheel must install on CPython 3.12, manylinux x86_64.
    for whl in "$OUT"/wheels/*.whl; do
        tags=$(basename "$whl" .whl | awk -F- '{print $(NF-2) "-" $(NF-1) "-" $NF}')
        IFS=- read -r pytag abitag plattag <<<"$tags"
        case "$pytag" in py3|py2.py3|cp312|cp3[0-9]|cp31[0-2]) ;;
            *) die "$(basename "$whl"): python tag '$pytag' does not run on CPython 3.12" ;; esac
        case "$abitag" in none|cp312|abi3) ;;
            *) die "$(basename "$whl"): ABI tag '$abitag' does not load in CPython 3.12" ;; esac
        case "$plattag" in any|*manylinux*x86_64*) ;;
            *) die "$(basename "$whl"): platform tag '$plattag' is not manylinux x86_64" ;; esac
        [[ "$abitag" != abi3 || "$pytag" == cp3* ]] || die "$(basename "$whl"): abi3 with '$pytag'"
    done
fi

# 4. MANIFEST.txt and the size limit.
(cd "$OUT" && find . -type f ! -name MANIFEST.txt ! -name .gpu_bundle -printf '%s\t%P\n' | sort -k2) >"$TMP/files"
total=$(awk -F'\t' '{s += $1} END {print s + 0}' "$TMP/files")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')
git diff --quiet HEAD 2>/dev/null || commit="$commit with uncommitted changes"
{
    echo "# mixaq_mmdet GPU bundle: $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)$(
        [ "$DRY_RUN" = 1 ] && echo ', dry run (no downloads)')"
    echo "# bytes	file"
    cat "$TMP/files"
    echo "# total $total bytes ($(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}') MiB)"
} >"$OUT/MANIFEST.txt"
limit=$((LIMIT_MIB * 1024 * 1024))
if [ "$total" -gt "$limit" ]; then
    echo "make_gpu_bundle: the largest files:" >&2
    sort -n -r "$TMP/files" | head -n 5 >&2
    die "the bundle in $OUT is $total bytes, over BUNDLE_LIMIT_MIB=$LIMIT_MIB ($limit bytes)" \
        "(the device tool carries 64 MiB in all)"
fi
echo "make_gpu_bundle: $OUT: $(wc -l <"$TMP/files") files, $total bytes" \
    "(limit $LIMIT_MIB MiB); see MANIFEST.txt"
