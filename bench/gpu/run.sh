#!/usr/bin/env bash
# One-shot GPU benchmark of the Lathe engine (see gpu_bench.py for what it measures).
#
#   bash bench/gpu/run.sh                      # full run on the first CUDA GPU (< 10 min on an H200)
#   bash bench/gpu/run.sh --device cpu --quick # smoke test anywhere
#
# Python, in order of preference: $LATHE_PYTHON; a python3 whose torch sees CUDA; .venv/bin/python if its
# torch sees CUDA (or if --device cpu); otherwise a new .venv from worker/requirements.txt. Only the light
# packages the engine imports (safetensors) are pip-installed if missing; transformers is not needed here.
# Results: $OUT/gpu_results.json if $OUT is set, else bench/gpu/last_results.json.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

want_cuda=1
for arg in "$@"; do
  [[ "$arg" == "--device" || "$arg" == --device=cpu* ]] && want_cuda=0
done

has_torch() {  # has_torch PYTHON NEED_CUDA
  "$1" - "$2" <<'EOF' >/dev/null 2>&1
import sys, torch
sys.exit(0 if (sys.argv[1] == "0" or torch.cuda.is_available()) else 1)
EOF
}

PY=""
if [[ -n "${LATHE_PYTHON:-}" ]]; then
  PY="$LATHE_PYTHON"
elif command -v python3 >/dev/null && has_torch python3 1; then
  PY="python3"
elif [[ -x .venv/bin/python ]] && has_torch .venv/bin/python "$want_cuda"; then
  PY=".venv/bin/python"
elif [[ $want_cuda == 0 ]] && command -v python3 >/dev/null && has_torch python3 0; then
  PY="python3"
else
  if [[ ! -x .venv/bin/python ]]; then
    echo "[run.sh] creating .venv from worker/requirements.txt" >&2
    python3 -m venv .venv || exit 1
  fi
  echo "[run.sh] pip install -r worker/requirements.txt into .venv" >&2
  .venv/bin/pip install -q -r worker/requirements.txt || echo "[run.sh] pip install failed; trying anyway" >&2
  PY=".venv/bin/python"
fi
echo "[run.sh] python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1))" >&2

for mod in safetensors; do
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then
    echo "[run.sh] installing missing $mod" >&2
    "$PY" -m pip install -q "$mod" || echo "[run.sh] could not install $mod" >&2
  fi
done

"$PY" -u bench/gpu/gpu_bench.py "$@"
