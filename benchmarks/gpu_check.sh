#!/usr/bin/env bash
# The prepared check for one CUDA GPU, in under 8 minutes: everything this project cannot test on a CPU.
#
#   1. the CUDA-only tests (CUDA graphs for each recipe in fp32 and fp16, a skipped overflowing fp16 step inside
#      and outside a graph, the EMA without host syncs);
#   2. notebooks 01-04 headless with their default parameters, then again with amp="fp16" forced (the T4's path),
#      each series in a folder of its own (fp16 steps run eagerly under "auto": the graphed fp16 step is measured
#      by the CUDA tests and the benchmark, and becomes "auto" once they pass on a GPU);
#   3. benchmarks/train_speed.py: bf16 and fp16, each with and without CUDA graphs, steps and end to end (saving
#      included), against the seed-style baseline.
#
# It ends with one table: each part ok or FAILED with its time, then the speed table. Logs and executed notebooks
# go to $OUT (the device tool's output folder) or /tmp/gpu-check.
#
#   bash benchmarks/gpu_check.sh
#
# papermill and ipykernel are not on every GPU image: where they are missing, the wheels in .whl/ (made with
# `pip download` for the machine's Python, see docs/speed-and-quality.md) are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ANIME_GAN_CACHE_DIR="$OUT/machine-cache"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

if ! $PY -c "import papermill, ipykernel" 2>/dev/null && [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" | tee -a "$SUMMARY" \
    || { echo "no CUDA GPU visible" | tee -a "$SUMMARY"; exit 1; }
STATUS=0

part() {  # part NAME COMMAND...: run it, log to $OUT/NAME.log, one line in the summary
    local name=$1 started=$SECONDS result=ok
    shift
    "$@" > "$OUT/$name.log" 2>&1 || { result=FAILED; STATUS=1; }
    printf '%-34s %-7s %4d s\n' "$name" "$result" $((SECONDS - started)) | tee -a "$SUMMARY"
}

# 1. the tests that need CUDA (skipped on the CPU)
part cuda-tests $PY -m pytest -q -p no:cacheprovider -rs tests/test_training.py -k "cuda or fp16 or ema"

# 2. notebooks 01-04: the defaults, then fp16 forced; one data cache for both, a run folder each
for amp in auto fp16; do
    work="$OUT/series-$amp"
    rm -rf "$work" && mkdir -p "$work/executed" "$OUT/data"
    cp -r notebooks "$work/notebooks"
    ln -s "$PWD/utils" "$work/utils"
    ln -s "$OUT/data" "$work/data"
    for notebook in 01_dataset 02_models 03_training 04_gif; do
        options=()
        [[ $amp == fp16 && $notebook == 0[34]_* ]] && options=(-p amp fp16)
        part "notebook-$amp-$notebook" $PY -m papermill --cwd "$work/notebooks" -k python3 --log-output \
            "$work/notebooks/$notebook.ipynb" "$work/executed/$notebook.ipynb" "${options[@]}"
    done
    cp "$work"/generated/*/training.gif "$OUT/training-$amp.gif" 2>/dev/null
done

# 3. speed: bf16 (the default here) and fp16, each with and without the CUDA graph
part speed $PY benchmarks/train_speed.py --device cuda --synthetic-count 16384 --variant "CUDA graphs off" \
    --variant "amp fp16, CUDA graphs on" --variant "amp fp16, CUDA graphs off"

echo
cat "$SUMMARY"
echo
grep -A12 "^training path" "$OUT/speed.log"
grep "mixed precision\|CPU trial\|CUDA graphs" "$OUT"/notebook-*-03_training.log | sort -u | head -4
exit $STATUS
