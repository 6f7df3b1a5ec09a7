#!/usr/bin/env bash
# `make demo`: the pipeline end to end on a random-weight tiny pack (no large downloads).
# The MTCNN face detector needs its real (small) weights: taken from ../shared/fixtures when
# present, else fetched (`talkcli weights fetch`). TALKCLI and DEMO_PY override the programs.
set -euo pipefail
cd "$(dirname "$0")/.."
T="${TALKCLI:-.venv/bin/talkcli}"
PY="${DEMO_PY:-.venv/bin/python}"
D=".demo"
rm -rf "$D"
mkdir -p "$D"

$T weights tiny "$D/weights" --size 64
if [ -d ../shared/fixtures/mtcnn ]; then
  mkdir -p "$D/weights/mtcnn" && cp ../shared/fixtures/mtcnn/*.npy "$D/weights/mtcnn/"
else
  $T weights fetch mtcnn-pnet mtcnn-rnet mtcnn-onet --weights-dir "$D/weights"
fi
$PY -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$D/astronaut.png')"

W="--weights-dir $D/weights"
$T $W align "$D/astronaut.png" --out "$D/aligned" --size 256
$T $W invert "$D/aligned/astronaut.png" --out "$D/astronaut.npz" --method hybrid --steps 30 \
  --lpips alex --save-recon "$D/recon"
$T $W tune-pti "$D/aligned/astronaut.png" --out "$D/astronaut-tuned.pt" \
  --pivots "$D/astronaut.npz" --steps 50
$T $W weights inspect "$D/astronaut-tuned.pt" > "$D/tuned-inspect.txt"
head -n 5 "$D/tuned-inspect.txt"

# The main job: photo + speech -> video. Speech from espeak-ng when installed, else a
# synthesized speech-like signal (a buzz with syllable-rate loudness).
SENTENCE="Hello. I am an astronaut, and this video was made by talk C L I."
if command -v espeak-ng >/dev/null 2>&1; then
  espeak-ng -v en -s 150 -w "$D/speech.wav" "$SENTENCE"
else
  echo "espeak-ng not found: using a synthesized speech-like signal"
  $PY - "$D/speech.wav" <<'PYEOF'
import sys
import numpy as np
import soundfile as sf
t = np.arange(3 * 16000) / 16000
buzz = np.sign(np.sin(2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / 16000))
env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.7
noise = 0.02 * np.random.default_rng(0).standard_normal(len(t))
sf.write(sys.argv[1], (0.3 * env * buzz + noise).astype(np.float32), 16000)
PYEOF
fi
C="--cache-dir $D/cache"
$T $W animate $C --image "$D/astronaut.png" --audio "$D/speech.wav" \
  --out "$D/astronaut-speech.mp4" --paste-back --save-trajectory "$D/astronaut-speech.npz"
$T $W animate $C --image "$D/astronaut.png" --audio "$D/speech.wav" \
  --generator "$D/astronaut-tuned.pt" --smooth 1 --out "$D/astronaut-tuned-speech.mp4"
# Expressive motion (issue 16): blinks and head motion that follows the speech, through named
# controls. Random weights have no face for `talkcli directions find` to measure, so the demo
# plants a directions file (orthonormal, per_unit 1) and plots the controls applied per frame
# from the saved trajectory: the picture to look at is controls.png, not the face.
$PY - "$D/astronaut-speech.npz" "$D/directions.npz" <<'PYEOF'
import sys
import numpy as np
from talkcli.tiny.directions import write_tiny_directions
n_latent, style_dim = np.load(sys.argv[1])["w_identity"].shape
write_tiny_directions(sys.argv[2], n_latent, style_dim)
PYEOF
$T $W animate $C --image "$D/astronaut.png" --audio "$D/speech.wav" \
  --directions "$D/directions.npz" --blinks 30 --head-motion 1 --pose yaw=5 --seed 1 \
  --out "$D/astronaut-expressive.mp4" --save-trajectory "$D/astronaut-expressive.npz"
$PY - "$D/astronaut-expressive.npz" "$D/controls.png" <<'PYEOF'
import sys
import numpy as np
from talkcli.plots import plot_controls
t = np.load(sys.argv[1])
plot_controls(sys.argv[2], t["controls"], list(t["control_names"]), float(t["fps"]),
              "animate --blinks 30 --head-motion 1 --pose yaw=5")
print("controls per frame:", sys.argv[2])
PYEOF
$T $W media probe "$D/astronaut-speech.mp4" "$D/astronaut-tuned-speech.mp4"
echo "demo outputs in $D/: astronaut-speech.mp4 (pasted back into the photo), astronaut-tuned-speech.mp4"
echo "(the generator tuned on the photo), astronaut-expressive.mp4 (blinks, head motion; its controls"
echo "per frame plotted in controls.png) and their run manifests (.json)."
echo "Random weights: the chain runs end to end, but the pictures are abstract, not a talking face."
echo "Real model files: talkcli weights fetch ..., and an audio model from talkcli train (docs/animate.md)."
