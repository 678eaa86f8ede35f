#!/usr/bin/env bash
# Everything GPU-side in one prepared run, for the day a GPU is lent (issue 19); at most about 9 minutes (each
# step has its own time cap, and the most wanted results come first).
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]      # OUT_DIR default: benchmarks/results/gpu
#
# Steps, each with its wall time and exit status in OUT_DIR/steps.md (a failing step does not stop the next):
#   env        the GPU, driver and package versions                          -> env.txt
#   install    the project, editable, without dependencies (the GPU image brings torch and Triton; log to the
#              terminal only: a device run returns at most 8 files); wheels
#              in .whl/ (e.g. gptqmodel's, carried to a machine without registries) go to /tmp/site first
#              (.whl/ is git-ignored: name it in the device run's carry)
#   latency    linear_latency.py: Table-11 shapes, M in {1,16,32,64,256,1024}, W2/W3/W4, every peer that
#              imports but Marlin (its JIT build alone took over 2 minutes on an H200), and the GEMV's launch
#              configurations at M <= 16 (--decode-sweep); written after every shape
#                                                                             -> linear_latency_<gpu>_<date>.md/json
#   kernels    tests/kernels compiled for the GPU, not interpreted, on 14 pytest workers where pytest-xdist
#              imports (layout, matmul vs the reference, serving a quantized tiny model end to end with
#              load_quantized, the inline-PTX pair decode bit for bit against its pure-Triton twin)
#                                                                             -> kernel_tests.txt
#   cost       quant_cost.py: GPTAQ vs VLMQ(gptaq) quantize() on CUDA, Qwen2-VL-7B text dims, 2 layers,
#              32 calibration images: time and peak memory                    -> quant_cost.md
#   kernels-twin the decode and matmul tests again with VLMQ_KERNELS_ASM=0 (every kernel on the pure-Triton
#              twin of the inline PTX, which the kernels step runs by default) -> kernel_tests_twin.txt
#   static     SASS instruction counts per weight for sm_90, inline PTX on    -> compile_check.txt
# --dry-run (CPU, tested in CI): runs nothing heavy; checks each step's imports and command line instead.
# ONLY_STEPS=latency,kernels (any of the names above) runs env, install and those steps alone: a session whose
# device time must also cover --train picks what fits.
#
#   benchmarks/gpu_check.sh --train [--dry-run] [OUT_DIR]   # issue 15: train the headroom yardstick on the GPU
#
# --train runs env and install, then instead of the steps above (at most about 9 minutes):
#   train      tools/train_synthvlm.py --preset TRAIN_PRESET (default synthvlm-recall: the shipped yardstick from
#              scratch, the facts part then the recall-ft part) --device cuda, batches prepared by 12 worker
#              processes, at most TRAIN_MINUTES (default 5) of training per part (resumable: runs/gpu-train/),
#              exported in fp16
#                                            -> train_log.jsonl, <preset>-model.tar (the export as one file: a
#                                               device run returns at most 8)
#   probe      tools/headroom_probe.py on the export (GPTQ's room at W2/W3)            -> headroom.md
# The facts recipe (TRAIN_PRESET=facts, and the first part of synthvlm-recall) trains 9.9 min on an H200
# (results/gpu/run3), past one call's 10-minute limit: two calls on the warm machine: TRAIN_MINUTES=6 (the chain
# then stops, resumable, with a non-zero status), then TRAIN_MINUTES=11 (it resumes and finishes the recipe).
# The machine is released after 30 s idle, and the checkpoint with it: where the second call finds a fresh machine,
# carry the first call's export (untarred, e.g. runs/gpu-init/recall-model) and continue from it in the final stage
# with TRAIN_ARGS (extra flags for the train step; results/gpu/run4 did this): TRAIN_ARGS='--init-from
# runs/gpu-init/recall-model --init-stage 4 --text-steps 0 --warmup 20' (with a new optimizer: not the recipe exactly).
#
#   benchmarks/gpu_check.sh --text-lm [--dry-run] [OUT_DIR]  # issue 15: the text-only LM reference, trained longer
#
# --text-lm runs env and install, then:
#   text-lm    tools/text_lm_probe.py --device cuda: TEXT_LM_LAYERS (default 8) x 256 on the stdlib's source for
#              TEXT_LM_STEPS (default 4000) steps or TRAIN_MINUTES (default 5), then held-out perplexity under
#              RTN / GPTQ and the input spectrum (resumable: runs/gpu-text-lm/; a second call on the warm machine
#              needs a larger TRAIN_MINUTES, which counts the run's whole training time) -> text-lm.md/json
set -uo pipefail

DRY_RUN=0
TRAIN=0
TEXT_LM=0
OUT=benchmarks/results/gpu
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --train) TRAIN=1 ;;
        --text-lm) TEXT_LM=1 ;;
        -h|--help) awk 'NR > 1 && /^set -uo/ {exit} NR > 1' "$0"; exit 0 ;;  # the header above
        -*) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
if [ $TRAIN = 1 ] && [ $TEXT_LM = 1 ]; then
    echo "gpu_check.sh: --train and --text-lm are two separate runs; give one of them" >&2; exit 2
fi
MINUTES=${TRAIN_MINUTES:-5}
case $MINUTES in ''|*[!0-9]*) echo "gpu_check.sh: TRAIN_MINUTES=$MINUTES must be a whole number of minutes" >&2
                              exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 1
export PYTHONUNBUFFERED=1 GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-2}
STEPS="$OUT/steps.md"
printf '# gpu_check.sh%s\n\n| step | status | seconds |\n|---|---|---|\n' "$([ $DRY_RUN = 1 ] && echo ' --dry-run')" > "$STEPS"
FAILED=0

# step NAME LOG CAP -- COMMAND...: run one step (a program: killed after CAP seconds), its output to the terminal
# and to OUT/LOG unless LOG is "-" (a device run returns at most 8 files)
step() {
    local name=$1 log=$2 seconds=$3; shift 4
    if [ -n "${ONLY_STEPS:-}" ] && [[ ",env,install,$ONLY_STEPS," != *",$name,"* ]]; then
        printf '| %s | skipped (ONLY_STEPS) | 0 |\n' "$name" >> "$STEPS"
        return 0
    fi
    local start=$SECONDS status cap=(timeout "$seconds")
    declare -F "$1" >/dev/null && cap=()  # a shell function here: timeout cannot run it
    echo "== $name: $*"
    "${cap[@]}" "$@" 2>&1 | tee "$([ "$log" = - ] && echo /dev/null || echo "$OUT/$log")"
    status=${PIPESTATUS[0]}
    [ "$status" = 0 ] || FAILED=1
    printf '| %s | %s | %s |\n' "$name" "$([ "$status" = 0 ] && echo ok || echo "failed ($status)")" \
        "$((SECONDS - start))" >> "$STEPS"
}

# run_or_check NAME LOG CAP -- SCRIPT ARGS...: in a dry run, only parse the arguments; otherwise run the script
run_or_check() {
    local name=$1 log=$2 seconds=$3; shift 4
    if [ $DRY_RUN = 1 ]; then
        step "$name" "$log" 60 -- "$PY" benchmarks/check_command.py "$@"
    else
        step "$name" "$log" "$seconds" -- "$PY" "$@"
    fi
}

env_report() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "pcre", "gptqmodel", "vlmq_gptqmodel.kernels"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "importable"))
    except Exception as error:  # a missing package is reported, the later steps say what it costs
        print(name, "NOT IMPORTABLE:", error)
import torch
print("cuda device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
}

install_project() {
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || return 1
    fi
    # GPTQModel imports pypcre (a C extension) only to compile module-name patterns; where no wheel for this
    # Python was carried, the standard library's re stands in (reported here and in env.txt's pcre line)
    if ! "$PY" -c "import pcre" 2>/dev/null && [ -d /tmp/site ]; then
        printf '%s\n' '# Stand-in for pypcre (gpu_check.sh): the calls GPTQModel makes, on the standard re' \
            'import enum, re' 'from re import Pattern, compile, escape, split' \
            'class Flag(enum.IntFlag):' '    CASELESS = re.IGNORECASE' '    DOTALL = re.DOTALL' \
            '    MULTILINE = re.MULTILINE' > /tmp/site/pcre.py
        echo "pcre: no wheel for this Python; /tmp/site/pcre.py maps it onto re"
    fi
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || return 1
    "$PY" -c "import vlmq_gptqmodel.kernels as k; print('vlmq_gptqmodel.kernels from', k.__file__)"
}

# The twin rerun: the decode tests, the dispatch and the fused tile at group 128 (every bit width, dtype, act order).
TWIN_TESTS=(tests/kernels/test_kernel_decode.py tests/kernels/test_kernel_matmul.py
            -k "decode or (dispatch and 128) or (fused_tile and 128)")
[ -d /tmp/site ] || [ -d .whl ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
WORKERS=()  # compiling hundreds of kernel variants is the slow part: spread it where pytest-xdist is there
"$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n 14)
step env env.txt 60 -- env_report
if [ $DRY_RUN = 1 ]; then
    step install - 60 -- "$PY" -c "import vlmq_gptqmodel.kernels; print('kernels import')"
else
    step install - 120 -- install_project
fi
if [ $TRAIN = 1 ]; then
    PRESET=${TRAIN_PRESET:-synthvlm-recall}
    # In the work tree's ignored runs/: a second call on the still-warm machine resumes from its checkpoint
    # (give it a larger TRAIN_MINUTES: the budget counts the run's whole training time)
    RUN=runs/gpu-train/$PRESET
    read -ra EXTRA <<< "${TRAIN_ARGS:-}"
    run_or_check train - $(( MINUTES * 60 + 90 )) -- tools/train_synthvlm.py --preset "$PRESET" --device cuda \
        --data-workers 12 --threads 4 --max-minutes "$MINUTES" --out "$RUN" --export "$RUN-model" "${EXTRA[@]}"
    if [ $DRY_RUN = 0 ]; then
        # a chain preset logs per part, in run order (facts, recall-ft)
        cat "$RUN"/log.jsonl "$RUN"/facts/log.jsonl "$RUN"/recall-ft/log.jsonl > "$OUT/train_log.jsonl" 2>/dev/null
        [ -d "$RUN-model" ] && tar -cf "$OUT/$PRESET-model.tar" -C "$(dirname "$RUN")" "$PRESET-model"
    fi
    run_or_check probe - 120 -- tools/headroom_probe.py --model "$RUN-model" --out "$OUT/headroom.md"
    echo
    cat "$STEPS"
    exit $FAILED
fi
if [ $TEXT_LM = 1 ]; then
    # the BPE tokenizer and token ids take about a minute of CPU first; GPTQ's column loop a little after
    run_or_check text-lm - $(( MINUTES * 60 + 240 )) -- tools/text_lm_probe.py --device cuda --threads 4 \
        --layers "${TEXT_LM_LAYERS:-8}" --steps "${TEXT_LM_STEPS:-4000}" --max-minutes "$MINUTES" \
        --out runs/gpu-text-lm --report "$OUT/text-lm.md"
    echo
    cat "$STEPS"
    exit $FAILED
fi
run_or_check latency - 150 -- benchmarks/linear_latency.py --m 1 16 32 64 256 1024 --bits 2 3 4 --reps 30 \
    --decode-sweep --out "$OUT"
if [ $DRY_RUN = 1 ]; then
    step kernels kernel_tests.txt 120 -- "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/kernels
else
    step kernels kernel_tests.txt 150 -- "$PY" -m pytest -q -p no:cacheprovider "${WORKERS[@]}" -rfE tests/kernels
fi
run_or_check cost quant_cost.md 180 -- benchmarks/quant_cost.py --preset 7b --layers 2 --samples 32 --device cuda \
    --dtype float16 --methods "GPTAQ,VLMQ(gptaq)" --no-save
if [ $DRY_RUN = 1 ]; then
    step kernels-twin kernel_tests_twin.txt 120 -- env VLMQ_KERNELS_ASM=0 "$PY" -m pytest -q -p no:cacheprovider \
        --collect-only "${TWIN_TESTS[@]}"
else
    step kernels-twin kernel_tests_twin.txt 45 -- env VLMQ_KERNELS_ASM=0 "$PY" -m pytest -q -p no:cacheprovider \
        "${WORKERS[@]}" "${TWIN_TESTS[@]}"
fi
run_or_check static compile_check.txt 45 -- -m vlmq_gptqmodel.kernels.compile_check --arch 90 --asm on

echo
cat "$STEPS"
exit $FAILED
