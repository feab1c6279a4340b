#!/usr/bin/env bash
# GPU machine, call S: nvJPEG's hardware backend through ctypes (gpu/nvjpeg_hw.py: a decode
# state per thread, no interpreter lock held while it decodes) against torchvision's one locked
# decoder, and both at once: decode alone, pixels, the decoder tests, per-stage breakdown.
# Ran at commit 963bdca (gpu/nvjpeg_hw.py, gpu/bench_jpeg.py), removed since.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "from facedet_server.gpu.nvjpeg_hw import find_nvjpeg; print('libnvjpeg:', find_nvjpeg())"
if [ "$(python3 -c 'from facedet_server.gpu.nvjpeg_hw import find_nvjpeg; print(find_nvjpeg() is None)')" = True ]; then
  export FACEDET_NVJPEG=/tmp/site/nvidia/cu13/lib/libnvjpeg.so.13; echo "using the carried $FACEDET_NVJPEG"
fi
timeout 120 python3 -m facedet_server.gpu.bench_jpeg --image "$IMG" --check "$FACEDET_SHARED/images" \
  --json "$OUT/jpeg.json" 2>&1 | grep -vE "$QUIET" | tee "$OUT/jpeg.log" | grep -E "img/s|failed|libjpeg|device|Error" | tail -40
timeout 150 python3 -m pytest -q -s -rs -p no:cacheprovider tests/gpu/test_jpeg_decoders.py > "$OUT/tests-jpeg.log" 2>&1
grep -vE "$QUIET" "$OUT/tests-jpeg.log" | grep -E "passed|failed|Error|assert|SKIP|^(torchvision|hardware|both) " | tail -15
for dec in ${DECODERS:-hardware both torchvision}; do
  echo "=== bench_stages --gpu-decode $dec"
  timeout 150 python3 -m facedet_bench.gpu_stages --model "$FACEDET_MODEL" --image "$IMG" \
    --batch 64 --compile-mode default --gpu-decode $dec --json "$OUT/stages-$dec.json" 2>&1 | grep -vE "$QUIET" | tail -12
done
