#!/usr/bin/env bash
# `make demo`: the pipeline end to end on a random-weight tiny pack (no large downloads).
# The MTCNN face detector needs its real (small) weights: taken from ../shared/fixtures when
# present, else fetched (`talkcli weights fetch`).
set -euo pipefail
cd "$(dirname "$0")/.."
T=".venv/bin/talkcli"
D=".demo"
rm -rf "$D"
mkdir -p "$D"

$T weights tiny "$D/weights" --size 64
if [ -d ../shared/fixtures/mtcnn ]; then
  mkdir -p "$D/weights/mtcnn" && cp ../shared/fixtures/mtcnn/*.npy "$D/weights/mtcnn/"
else
  $T weights fetch mtcnn-pnet mtcnn-rnet mtcnn-onet --weights-dir "$D/weights"
fi
.venv/bin/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$D/astronaut.png')"

W="--weights-dir $D/weights"
$T $W align "$D/astronaut.png" --out "$D/aligned" --size 256
$T $W invert "$D/aligned/astronaut.png" --out "$D/astronaut.npz" --method hybrid --steps 30 \
  --lpips alex --save-recon "$D/recon"
$T $W tune-pti "$D/aligned/astronaut.png" --out "$D/astronaut-tuned.pt" \
  --pivots "$D/astronaut.npz" --steps 50
$T $W weights inspect "$D/astronaut-tuned.pt" | head -n 5
echo "demo outputs in $D/ (random weights: reconstructions are not faces)"
