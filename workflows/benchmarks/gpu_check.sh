#!/usr/bin/env bash
# The GPU checks in one prepared run (RESULTS.md, "On a GPU"): the CUDA tests, the quick suite
# with device "auto" → CUDA, then the GPU benchmarks. Each step has its own time limit and the
# whole run ends by DEADLINE seconds; everything goes to $OUT/log.txt (and the main job's
# summary.json), so a run cut short still says what passed.
#
#   OUT=out/gpu bash workflows/benchmarks/gpu_check.sh
#
# Environment: DEV (cuda), DEADLINE (s, 520), SUITE_S (s the quick suite may take, 240),
# WORKERS (xdist workers for it, 8), MODELS (trainer throughput, 8192), SCALE (TRAK cells,
# 20000), CIFAR_ARGS (cifar10.py options), SITE=DIR (pip-install the wheels in DIR first, for
# a machine without scdm's dependencies: anndata, scanpy, igraph, leidenalg and theirs; where
# the machine's pandas is 3.x, pandas 2.x with pytz and tzdata too, as anndata 0.12 needs < 3).
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TQDM_DISABLE=1
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to an output folder}; mkdir -p "$OUT"; LOG=$OUT/log.txt
T0=$(date +%s); DEADLINE=${DEADLINE:-520}; DEV=${DEV:-cuda}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
step() {  # step NAME LIMIT CMD...: runs with min(LIMIT, time left); its output into the log
  local name=$1 lim=$2; shift 2; local l; l=$(left); [ "$l" -lt "$lim" ] && lim=$l
  if [ "$lim" -lt 10 ]; then echo "== $name: skipped, no time left" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${lim}s): $*" >> "$LOG"
  local s; s=$(date +%s); timeout "$lim" "$@" >> "$LOG" 2>&1; local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$LOG"
}
if [ -n "${SITE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/scdm_site "$SITE"/*.whl || exit 3
  export PYTHONPATH=/tmp/scdm_site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch,numpy,scipy,pandas,sklearn,anndata,scanpy; print('torch',
torch.__version__,'cuda',torch.version.cuda,'available',torch.cuda.is_available(),'numpy',
numpy.__version__,'scipy',scipy.__version__,'pandas',pandas.__version__,'sklearn',
sklearn.__version__,'anndata',anndata.__version__,'scanpy',scanpy.__version__)"; } >> "$LOG" 2>&1
# -v names every test as it ends and --timeout (pytest-timeout, where installed) stops a hung
# one with its traceback, so a run cut at its limit still says which test failed
XD=""; python3 -c "import xdist" 2>/dev/null && XD="-n ${WORKERS:-8}"
TO=""; python3 -c "import pytest_timeout" 2>/dev/null && TO="--timeout 100"
step cuda_tests 60 python3 -m pytest -v -p no:cacheprovider -m cuda tests -rA
step quick_suite "${SUITE_S:-240}" python3 -m pytest -v -p no:cacheprovider $XD $TO \
  -m "not slow" tests -rfE --durations=15
step throughput 60 python3 workflows/benchmarks/train_throughput.py --device "$DEV" \
  --models "${MODELS:-8192}"
step lasso 60 python3 workflows/benchmarks/regression.py --device "$DEV"
# the main job writes its figures elsewhere: only 8 files come back from a lent machine's $OUT
step main_job 90 python3 -m scdm.cli run --out /tmp/scdm_gpu_pbmc --device "$DEV"
cp /tmp/scdm_gpu_pbmc/summary.json "$OUT/" 2>/dev/null
step cifar_speed 110 python3 workflows/benchmarks/cifar10.py --device "$DEV" \
  ${CIFAR_ARGS:---epochs 8 --models 8}
step trak_scale 200 env -u TQDM_DISABLE python3 workflows/benchmarks/trak_benchmark.py \
  --scale "${SCALE:-20000}"
echo "total $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
