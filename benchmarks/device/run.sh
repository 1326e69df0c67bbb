#!/usr/bin/env bash
# Issue 14's GPU checks in one command, for the device tool (`run`, carry [".gpu-site"], timeout_s 600):
#
#   bash benchmarks/device/run.sh
#
# Unpacks .gpu-site/site312.tar.xz (pack.sh) onto PYTHONPATH, names the GPU, then writes under $OUT:
#   device.jsonl       bench_device.py: tokens/s per mode at d_sae 16 384 and its ratio to the encoder, and each
#                      mode's codes on the GPU against the CPU's (objective within fp32 tolerance, equal supports);
#   pythia_cuda.jsonl  bench_pythia_shape.py --extra --device cuda: the eval at the paper's shape, random weights;
# each with its stderr beside it. Every step has its own time limit, so a hang costs that step, not the lease.
# Here, without a GPU: DEVICE=cpu SITE=none SMOKE=1 bash benchmarks/device/run.sh (small sizes, same steps).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-device-out}
device=${DEVICE:-cuda}
mkdir -p "$out"
if [ "${SITE:-}" != none ]; then
    site=/tmp/site312
    mkdir -p "$site" && tar -xJf .gpu-site/site312.tar.xz -C "$site" || { echo "no .gpu-site/site312.tar.xz: run pack.sh here and carry .gpu-site" >&2; exit 3; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; } | tee "$out/gpu.txt"
"$py" -c "import torch, sae_lens, transformer_lens, saelens_amort.runners.eval; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
    2>&1 | tee -a "$out/gpu.txt" || { echo "imports failed (see gpu.txt): add the missing package to wheels.txt" >&2; exit 4; }
if [ -n "${SMOKE:-}" ]; then
    inference=(--rows 256 --d-sae 2048 --compare-rows 32 --repeats 1); shape=(--runs 1024:1024)
else
    inference=(); shape=(--runs 4096:4096 2048:16384)
fi
timeout "${INFERENCE_S:-240}" "$py" benchmarks/bench_device.py --device "$device" "${inference[@]}" \
    > "$out/device.jsonl" 2> "$out/device.err"
echo "bench_device exit $?"
timeout "${SHAPE_S:-270}" "$py" benchmarks/bench_pythia_shape.py "${shape[@]}" --extra --device "$device" \
    > "$out/pythia_cuda.jsonl" 2> "$out/pythia_cuda.err"
echo "bench_pythia_shape exit $?"
tail -n 2 "$out/device.err" "$out/pythia_cuda.err"
