#!/usr/bin/env bash
# The GPU check: run on a borrowed GPU machine (no network, 15 minutes) from
# inside the bundle that tools/make_gpu_bundle.sh made (it copies this script
# there). With the machine's own python3 and torch it makes a venv
# (--system-site-packages, plus the interpreter's own venv if it runs in one:
# torch is never installed or replaced), installs the bundle's wheels offline
# (--no-index --no-deps), unpacks the repository, then runs, within a wall-clock
# budget, each step under `timeout`:
#   mmcv_cpu_build   mmcv 2.1.0 with its CPU ops (the GPU hidden; minutes on many cores):
#                    mmdet's models import mmcv.ops, so every later step needs it
#   env              environment report -> RESULTS/env.txt
#   cuda_tests       pytest tests/test_cuda_numerics.py
#   backbone_speed   benchmarks/backbone_speed.py, Swin-T 800x1216, fp32 and bf16, eager
#   integer_speed    benchmarks/integer_speed.py, Swin-T 800x1216: the integer rows
#   amp_backbone     QAT and SAQA training steps of the quantized Swin, fp16 AmpOptimWrapper
#   backbone_compile backbone_speed.py --compile (what is left of the time, capped)
#   mmcv_cuda_build  mmcv 2.1.0 with its CUDA ops for this card only (needs >= 6 minutes)
#   amp_detector     QAT and SAQA training steps of the whole Mask R-CNN, fp16
#   smoke            tools/smoke_coco.py --rows fp qat_uniform_w4a4 (COCO fixture, Swin-T, cuda)
# The last two need mmcv's CUDA ops (RoIAlign, NMS on the device): skipped,
# naming why, if mmcv_cuda_build did not run or failed.
#
# Usage: [BUNDLE=DIR] bash gpu_check.sh [--dry-run] [--steps NAME,NAME,...]
#   --dry-run  (or GPU_CHECK_DRY_RUN=1) the same flow on CPU with tiny sizes, for
#              the test suite: device cpu, the interpreter's own mmcv, no builds,
#              no compile, no smoke, nothing fetched.
#   --steps    only these steps (in the order above), e.g. a second call:
#              --steps mmcv_cuda_build,amp_detector,smoke (the venv and the built
#              mmcv wheels in GPU_CHECK_WORK are reused).
# Env: PYTHON (default python3) the interpreter with torch; GPU_CHECK_BUDGET_S
#   (default 720) the whole run's wall-clock seconds; RESULTS (default $OUT if set,
#   else ./gpu_check_results) one <step>.log and <step>.rc per step and
#   summary.json; GPU_CHECK_WORK (default ${TMPDIR:-/tmp}/mixaq_gpu_check) venv,
#   mmcv wheels and unpacked repository. Exit status 0 only if every step that ran passed.
set -euo pipefail

die() { echo "gpu_check: error: $*" >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
ONLY=
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --steps) [ $# -ge 2 ] || die "--steps needs a comma-separated list"; ONLY=$2; shift ;;
        --steps=*) ONLY=${1#--steps=} ;;
        -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (options: --dry-run, --steps LIST)" ;;
    esac
    shift
done
[[ "$DRY_RUN" =~ ^[01]$ ]] || die "GPU_CHECK_DRY_RUN must be 0 or 1, got '$DRY_RUN'"
STEPS=(mmcv_cpu_build env cuda_tests backbone_speed integer_speed amp_backbone backbone_compile
    mmcv_cuda_build amp_detector smoke)
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        [[ " ${STEPS[*]} " == *" $s "* ]] ||
            die "unknown step '$s' in --steps (steps: ${STEPS[*]})"
    done
fi

BUNDLE=$(cd "${BUNDLE:-$SCRIPT_DIR}" 2>/dev/null && pwd) ||
    die "BUNDLE='${BUNDLE:-}' is not a folder"
BUDGET=${GPU_CHECK_BUDGET_S:-720}
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "GPU_CHECK_BUDGET_S must be whole seconds, got '$BUDGET'"
RESULTS=${RESULTS:-${OUT:-$PWD/gpu_check_results}}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/mixaq_gpu_check}
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON='$PYTHON' is not on PATH"
PYTHON=$(command -v "$PYTHON")
[ -f "$BUNDLE/repo.tar.gz" ] ||
    die "no repo.tar.gz in BUNDLE='$BUNDLE': make the bundle with make gpu-bundle"
ls "$BUNDLE"/wheels/mixaq_mmdet-*.whl >/dev/null 2>&1 ||
    die "no wheels/mixaq_mmdet-*.whl in BUNDLE='$BUNDLE'"
SDIST="$BUNDLE/sdist/mmcv-2.1.0.tar.gz"
if [ "$DRY_RUN" = 0 ]; then
    [ -f "$SDIST" ] ||
        die "no sdist/mmcv-2.1.0.tar.gz in BUNDLE='$BUNDLE' (a --dry-run bundle? make gpu-bundle)"
    DEVICE=cuda
else
    DEVICE=cpu
fi
# Nothing is ever fetched: pip has no index, and a proxy that answers nothing.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
unset PYTHONPATH  # the bundle's packages, not a checkout's on the path
mkdir -p "$RESULTS" "$WORK"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(cd "$WORK" && pwd)
VENV="$WORK/venv"
VPY="$VENV/bin/python"
REPO="$WORK/repo"
START=$SECONDS
STEP_TSV="$RESULTS/steps.tsv"
: >"$STEP_TSV"
RESERVE_S=10  # kept for the summary

bundle_id() { cat "$BUNDLE/MANIFEST.txt" "$BUNDLE/repo.tar.gz" 2>/dev/null | cksum; }

remaining() { echo $((BUDGET - (SECONDS - START))); }

write_summary() {  # summary.json from steps.tsv, after every step
    "$PYTHON" - "$STEP_TSV" "$RESULTS/summary.json" "$DRY_RUN" "$BUDGET" \
        $((SECONDS - START)) "$DEVICE" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
tsv, out, dry, budget, elapsed, device = sys.argv[1:]
steps = []
for line in open(tsv):
    name, status, rc, seconds, reason = line.rstrip('\n').split('\t')
    step = dict(name=name, status=status, rc=None if rc == '-' else int(rc),
                seconds=float(seconds), reason=reason, log=f'{name}.log')
    junit = os.path.join(os.path.dirname(out), f'{name}.xml')
    if status != 'skipped' and os.path.exists(junit):  # pytest's counts
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
        counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
        step['tests'] = counts
        step['reason'] = step['reason'] or (
            f"{counts['tests'] - counts['skipped']} ran, {counts['skipped']} skipped")
    steps.append(step)
ran = [s for s in steps if s['status'] != 'skipped']
json.dump(dict(mode='dry-run' if dry == '1' else 'gpu', device=device, budget_s=int(budget),
               elapsed_s=int(elapsed), passed=all(s['status'] == 'passed' for s in ran),
               steps=steps), open(out, 'w'), indent=1)
EOF
}

record() {  # record NAME STATUS RC SECONDS REASON
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$STEP_TSV"
    echo "gpu_check: $1: $2${5:+ ($5)}"
    write_summary
}

skip() { record "$1" skipped - 0 "$2"; }

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run_step NAME CAP_S MIN_S CMD...: run CMD (in $REPO) under timeout, at most CAP_S and
# what is left of the budget; skipped if less than MIN_S is left.
run_step() {
    local name=$1 cap=$2 min=$3; shift 3
    wanted "$name" || return 0
    local left=$(($(remaining) - RESERVE_S))
    if [ "$left" -lt "$min" ]; then
        skip "$name" "no time left: ${left} s of the budget, the step needs ${min} s"
        return 0
    fi
    local limit=$((cap < left ? cap : left)) t0=$SECONDS rc=0
    echo "gpu_check: $name (at most ${limit} s)"
    (cd "$REPO" && timeout --kill-after=15 "$limit" "$@") >"$RESULTS/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$RESULTS/$name.rc"
    if [ "$rc" = 0 ]; then
        record "$name" passed 0 $((SECONDS - t0)) ""
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record "$name" failed "$rc" $((SECONDS - t0)) "timed out after ${limit} s"
    else
        record "$name" failed "$rc" $((SECONDS - t0)) "exit status $rc: see $name.log"
    fi
}

# ---- set-up: the venv, the bundle's wheels, the repository ---------------------------------
setup() {
    local site parent_sites
    rm -rf "$VENV" "$REPO"
    "$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
    site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # A venv made from a venv sees the base interpreter's site-packages only: add
    # the parent venv's (torch, pip) behind the new one's.
    parent_sites=$("$PYTHON" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    print("\n".join(site.getsitepackages()))')
    if [ -n "$parent_sites" ]; then
        while read -r dir; do
            echo "import site; site.addsitedir('$dir')"
        done <<<"$parent_sites" >"$site/_gpu_check_parent_site.pth"
    fi
    "$VPY" -m pip --version || { echo "no pip importable in $VENV (from $PYTHON)"; return 1; }
    local torch_here torch_base
    torch_base=$("$PYTHON" -c 'import torch; print(torch.__file__)')
    torch_here=$("$VPY" -c 'import torch; print(torch.__file__)')
    [ "$torch_here" = "$torch_base" ] ||
        { echo "the venv's torch is $torch_here, not $torch_base"; return 1; }
    echo "torch: $torch_here (the interpreter's own)"
    # --ignore-installed: into the venv even where the interpreter has the same
    # version (it is never uninstalled there).
    "$VPY" -m pip install --no-index --no-deps --ignore-installed --no-build-isolation \
        "$BUNDLE"/wheels/*.whl
    mkdir -p "$REPO"
    tar -xzf "$BUNDLE/repo.tar.gz" -C "$REPO"
    # mmcv itself (and so the plugin, whose models import mmcv.ops) comes with the
    # mmcv_cpu_build step; in a dry run it is the interpreter's own.
    "$VPY" -c 'import torch, mmdet, mmengine, pycocotools, pymoo; print("imports ok")'
    bundle_id >"$VENV/.gpu_check_ready"
}

site_packages() { "$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

echo "gpu_check: $([ "$DRY_RUN" = 1 ] && echo 'dry run on cpu' || echo 'on cuda'), bundle" \
    "$BUNDLE, budget $BUDGET s, results in $RESULTS"
t0=$SECONDS
if [ -n "$ONLY" ] && [ -d "$REPO" ] &&
    [ "$(cat "$VENV/.gpu_check_ready" 2>/dev/null)" = "$(bundle_id)" ]; then
    record setup passed 0 0 "reused $VENV"
else
    rc=0
    # in the background, so that set -e holds inside it (it would not in an if or ||)
    (setup) >"$RESULTS/setup.log" 2>&1 &
    wait $! || rc=$?
    if [ "$rc" != 0 ]; then
        record setup failed "$rc" $((SECONDS - t0)) "see setup.log"
        for s in "${STEPS[@]}"; do wanted "$s" && skip "$s" "setup failed"; done
        tail -n 20 "$RESULTS/setup.log" >&2
        exit 1
    fi
    record setup passed 0 $((SECONDS - t0)) ""
fi
STEPS_PY=(tools/gpu_check_steps.py)
# build_mmcv KIND: mmcv's wheel with its CPU or CUDA ops, built once per work folder
# (a second call reuses it), installed into the venv over any other mmcv; then its
# ops run. CPU: the GPU is hidden (mmcv's setup.py builds CUDA ops whenever
# torch sees one). ninja from the image, or torch compiles one file at a time.
MMCV_BUILD='set -euo pipefail; kind=$1 vpy=$2 sdist=$3 wheels=$4
ninja_dir=$("$vpy" -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null || true)
[ -z "$ninja_dir" ] || export PATH="$ninja_dir:$PATH"
command -v ninja >/dev/null || echo "warning: no ninja: mmcv compiles one file at a time"
if ls "$wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "reusing $(ls "$wheels"/mmcv-2.1.0-*.whl)"
else
    rm -rf "$wheels.partial"
    if [ "$kind" = cpu ]; then export CUDA_VISIBLE_DEVICES= FORCE_CUDA=0; else export FORCE_CUDA=1; fi
    MMCV_WITH_OPS=1 "$vpy" -m pip wheel --no-index --no-deps --no-build-isolation \
        -w "$wheels.partial" "$sdist"
    mv "$wheels.partial" "$wheels"
fi
"$vpy" -m pip install --no-index --no-deps --ignore-installed --force-reinstall \
    "$wheels"/mmcv-2.1.0-*.whl
"$vpy" -c "from mixaq_mmdet.compat import run_mmcv_ops; run_mmcv_ops(\"$kind\")"'
MAX_JOBS=${MAX_JOBS:-$(nproc)}
ARCH=
if [ "$DRY_RUN" = 1 ]; then
    wanted mmcv_cpu_build && skip mmcv_cpu_build "dry run: the interpreter's mmcv"
else
    run_step mmcv_cpu_build 420 60 env MAX_JOBS="$MAX_JOBS" bash -c "$MMCV_BUILD" mmcv_build \
        cpu "$VPY" "$SDIST" "$WORK/mmcv_cpu_wheel"
    ARCH=$("$VPY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' ||
        echo none)
fi
if ! (cd "$REPO" && "$VPY" -c 'import mmcv.ops, mixaq_mmdet') >"$RESULTS/imports.log" 2>&1; then
    for s in "${STEPS[@]:1}"; do
        wanted "$s" && skip "$s" "mmcv.ops or the plugin do not import: see imports.log"
    done
    STEPS=()
fi

has_step() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
has_step env && wanted env && {
    t0=$SECONDS rc=0
    (cd "$REPO" && timeout 120 "$VPY" "${STEPS_PY[@]}" env "$BUNDLE/wheels") \
        >"$RESULTS/env.txt" 2>"$RESULTS/env.log" || rc=$?
    echo "$rc" >"$RESULTS/env.rc"
    if [ "$rc" = 0 ]; then record env passed 0 $((SECONDS - t0)) "";
    else record env failed "$rc" $((SECONDS - t0)) "see env.txt and env.log"; fi
}

if [ "$DRY_RUN" = 1 ]; then
    BACKBONE=(--device cpu --tiny --shapes 224x224 --batch-sizes 1 --precisions fp32 bf16
        --repeats 1 --warmup 0 --threads 2)
    INTEGER=(--device cpu --tiny --shapes 224x224 --repeats 1 --warmup 0 --threads 2)
    AMP=(--device cpu --steps 1 --batch 1 --fused-kernels false)  # compiling: minutes on CPU
else
    BACKBONE=(--device cuda --shapes 800x1216 --batch-sizes 1 --precisions fp32 bf16
        --repeats 5 --warmup 1)
    INTEGER=(--device cuda --shapes 800x1216 --repeats 5 --warmup 1)
    AMP=(--device cuda --steps 4 --batch 2)
fi
if has_step cuda_tests; then
    run_step cuda_tests 240 30 "$VPY" -m pytest tests/test_cuda_numerics.py -q \
        -p no:cacheprovider --junitxml "$RESULTS/cuda_tests.xml"
    run_step backbone_speed 180 30 "$VPY" benchmarks/backbone_speed.py "${BACKBONE[@]}" \
        --json "$RESULTS/backbone_speed.json"
    run_step integer_speed 150 30 "$VPY" benchmarks/integer_speed.py "${INTEGER[@]}" \
        --json "$RESULTS/integer_speed.json"
    run_step amp_backbone 180 30 "$VPY" "${STEPS_PY[@]}" amp --level backbone "${AMP[@]}" \
        --json "$RESULTS/amp_backbone.json"
fi

if [ "$DRY_RUN" = 1 ]; then
    wanted backbone_compile && skip backbone_compile "dry run"
    wanted mmcv_cuda_build && skip mmcv_cuda_build "dry run"
    has_step amp_detector && run_step amp_detector 240 30 "$VPY" "${STEPS_PY[@]}" amp \
        --level detector "${AMP[@]}" --json "$RESULTS/amp_detector.json"
    wanted smoke && skip smoke "dry run"
elif has_step backbone_compile; then
    run_step backbone_compile 300 180 "$VPY" benchmarks/backbone_speed.py "${BACKBONE[@]}" \
        --compile --json "$RESULTS/backbone_compile.json"
    run_step mmcv_cuda_build 600 360 env MAX_JOBS="$MAX_JOBS" TORCH_CUDA_ARCH_LIST="$ARCH" \
        bash -c "$MMCV_BUILD" mmcv_build cuda "$VPY" "$SDIST" "$WORK/mmcv_cuda_wheel"
    if "$VPY" -c 'import sys, mmcv.ops; sys.exit(mmcv.ops.get_compiling_cuda_version() == "not available")' 2>/dev/null; then
        run_step amp_detector 180 60 "$VPY" "${STEPS_PY[@]}" amp --level detector "${AMP[@]}" \
            --json "$RESULTS/amp_detector.json"
        # The smoke finds configs/ next to the package (mixaq_mmdet/tables): a copy of
        # the installed package in the unpacked repository, first on the path.
        rm -rf "$REPO/mixaq_mmdet" && cp -r "$(site_packages)/mixaq_mmdet" "$REPO/mixaq_mmdet"
        run_step smoke 420 150 env PYTHONPATH="$REPO" PYTORCH_NVML_BASED_CUDA_CHECK=1 \
            "$VPY" tools/smoke_coco.py \
            --work-dir "$WORK/smoke" --rows fp qat_uniform_w4a4
        cp "$WORK/smoke/smoke.json" "$RESULTS/smoke.json" 2>/dev/null || true
    else
        built=$(awk -F'\t' '$1 == "mmcv_cuda_build" {print $2 ($5 ? ": " $5 : "")}' "$STEP_TSV")
        reason="mmcv has no CUDA ops (mmcv_cuda_build ${built:-not run})"
        for s in amp_detector smoke; do wanted "$s" && skip "$s" "$reason"; done
    fi
fi

write_summary
"$PYTHON" - "$RESULTS/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"gpu_check: {s['mode']} on {s['device']}, {s['elapsed_s']} s of {s['budget_s']}:")
for step in s['steps']:
    print(f"  {step['name']:17} {step['status']:8} {step['seconds']:6.0f} s  {step['reason']}")
print('gpu_check: PASSED' if s['passed'] else 'gpu_check: FAILED')
sys.exit(0 if s['passed'] else 1)
EOF
