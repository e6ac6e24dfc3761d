#!/usr/bin/env bash
# The GPU benchmarks in one call, for a lent accelerator machine with a short lease: the
# set-up is checked first (a wrong environment fails in seconds, not after the lease), then
# each part runs under its own time limit, in order of priority, its log written to $OUT as
# it goes (so a part cut short still reports what it finished).
#
#   PART=1 bash benchmarks/gpu_session.sh    # smoothing ratios, filters, accelerator filter/smc
#   PART=2 bash benchmarks/gpu_session.sh    # accelerator pdds/fk, language-model steering
#   QUICK=1 PART=1 bash benchmarks/gpu_session.sh    # smoke run of the script (any machine)
#
# Packages the machine lacks travel as wheels in .whl/ (blackjax, arviz 1.x and its parts,
# xarray-einstats); particlekit itself runs from the working tree. PYTHON picks the
# interpreter (default python3).
set -u
OUT=${OUT:-/tmp/gpu_out}
PY=${PYTHON:-python3}
PART=${PART:-1}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1; nproc; "$PY" -c "import sys, jax, numpyro, blackjax, arviz; \
print(sys.version.split()[0], 'jax', jax.__version__, 'numpyro', numpyro.__version__, \
'blackjax', blackjax.__version__, 'arviz', arviz.__version__, jax.devices())") \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
"$PY" -c "import particlekit" || exit 1

part() {  # part NAME SECONDS COMMAND...: one benchmark under a time limit, logged to $OUT
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $?, $((SECONDS - t0)) s"
    pkill -f "benchmarks/bench_" 2>/dev/null  # a cut-short run's worker processes too
    tail -n 40 "$OUT/$name.log"
}

if [ "$QUICK" = 1 ]; then
    S_SIZES=1024 F_SIZES=1e3 A_MAX=1e3 A_QUICK=--quick L_QUICK=--quick
else
    S_SIZES=65536,1048576 F_SIZES=1e4,1e5,1e6 A_MAX=1e7 A_QUICK= L_QUICK=
fi
ACCEL=(benchmarks/bench_accelerator.py --max-n "$A_MAX" --min-time 0.3 --check-budget 2
       --check-seeds 6 --jsonl "$OUT/accel.jsonl" $A_QUICK)
if [ "$PART" = 1 ]; then
    part smoothing 130 "$PY" benchmarks/bench_smoothing.py --ratio-only --sizes "$S_SIZES"
    part filters 110 "$PY" benchmarks/bench_filters.py --models lg,lg4 --sizes "$F_SIZES" \
        --repeats 5 --skip "particles,jax hand+pk.sys+numpyro"
    part accel_filter_smc 150 "$PY" "${ACCEL[@]}" --recipes filter,smc
else
    part accel_pdds_fk 170 "$PY" "${ACCEL[@]}" --recipes pdds,fk
    part lm 110 "$PY" benchmarks/bench_lm_steering.py --skip-accuracy --repeats 3 $L_QUICK
fi
