#!/usr/bin/env bash
# GPU machine, call Q: nvImageCodec on the hardware JPEG engines against torchvision's one
# locked nvJPEG decoder, and both at once (threads take turns): decode alone, pixels, the
# decoder tests, and the per-stage breakdown with each (fourth pass of issue 6).
# Ran at commit 1c2aa88 (nvImageCodec in gpu/jpeg.py, gpu/bench_jpeg.py), removed since.
source .ci/gpu-setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# Which nvImageCodec backends this machine has (the CUDA one failed to create in a first try).
for kind in HW_GPU_ONLY GPU_ONLY HYBRID_CPU_GPU; do
  PYNVIMGCODEC_VERBOSITY=3 timeout 60 python3 -c "
import numpy as np; from nvidia import nvimgcodec as n
d = n.Decoder(backends=[n.Backend(n.$kind)])
out = d.decode([n.CodeStream(np.fromfile('$FACEDET_SHARED/images/' + f, np.uint8)) for f in ('zidane.jpg', 'test.jpg')])
print('$kind', [None if o is None else o.shape for o in out])" 2>&1 | grep -vE "^\s*$" | tail -4 | cut -c1-240
done
timeout 120 python3 -m facedet_server.gpu.bench_jpeg --image "$IMG" --check "$FACEDET_SHARED/images" \
  --decoders torchvision,nvimgcodec:hw,both --json "$OUT/jpeg.json" 2>&1 | grep -vE "$QUIET" \
  | tee "$OUT/jpeg.log" | grep -E "img/s|failed|libjpeg|device" | tail -40
PYNVIMGCODEC_VERBOSITY=1 timeout 150 python3 -m pytest -q -s -rs -p no:cacheprovider tests/gpu/test_jpeg_decoders.py > "$OUT/tests-jpeg.log" 2>&1
grep -vE "$QUIET" "$OUT/tests-jpeg.log" | grep -E "passed|failed|Error|assert|SKIP|^(torchvision|nvimgcodec|both) " | tail -15
for dec in ${DECODERS:-both nvimgcodec torchvision}; do
  echo "=== bench_stages --gpu-decode $dec"
  PYNVIMGCODEC_VERBOSITY=1 timeout 150 python3 -m facedet_bench.gpu_stages --model "$FACEDET_MODEL" --image "$IMG" \
    --batch 64 --compile-mode default --gpu-decode $dec --json "$OUT/stages-$dec.json" 2>&1 | grep -vE "$QUIET" | tail -12
done
