#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one go (nothing here has run on a GPU yet: see benchmarks/README.md).
#
#   bash benchmarks/gpu_check.sh            # tests + full engine benchmark (~10 min)
#   bash benchmarks/gpu_check.sh --quick    # tests + quick benchmark
#   DEVICE=cpu CASES="mlp_digits_c50_adam" bash benchmarks/gpu_check.sh --quick   # a dry run of this script on CPU
#
# 1. the engine equivalence tests with every tensor on the GPU (pytest --device cuda: batched == sequential
#    for SGD/momentum, Adam, FedProx and both loss reports, on the linear, fold and vmap paths, TF32 off);
# 2. end-to-end simulations on CUDA through the CLI (FedAvg and QSFL, both engines);
# 3. benchmarks/engine.py on the GPU (batched vs sequential, % of the GPU's float32 matmul peak, GPU memory)
#    and the largest single-chunk cohort of femnist_c20 that fits. Results land in out/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; fi
DEVICE="${DEVICE:-cuda}"
CASE_ARGS=()
if [ -n "${CASES:-}" ]; then read -r -a CASE_LIST <<< "$CASES"; CASE_ARGS=(--cases "${CASE_LIST[@]}"); fi
OUT=out/gpu_check
mkdir -p "$OUT"

python -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name() if ok else 'no CUDA device'); sys.exit(0 if ok or sys.argv[1] == 'cpu' else 1)" "$DEVICE"

echo "== 1. engine equivalence tests on $DEVICE"
python -m pytest -q -p no:cacheprovider tests/qsfl/test_engine_batched.py tests/qsfl/test_engine_local.py --device "$DEVICE"

echo "== 2. simulations on $DEVICE (CLI)"
for engine in batched sequential; do
    for strategy in fedavg qsfl; do
        python -m qsfl_cli simulate --device "$DEVICE" --engine "$engine" --strategy "$strategy" --rounds 3 --quiet \
            --out "$OUT/simulate_${strategy}_${engine}" --overwrite
    done
done

echo "== 3. engine benchmark on $DEVICE"
python benchmarks/engine.py --device "$DEVICE" $QUICK "${CASE_ARGS[@]}" --json "$OUT/engine.json" | tee "$OUT/engine.md"
python benchmarks/engine.py --device "$DEVICE" --largest-cohort "${LARGEST:-femnist_c20}" ${LIMIT:+--limit "$LIMIT"} | tee "$OUT/largest_cohort.json"
echo "== done: results in $OUT"
