#!/usr/bin/env bash
# Runs the step benchmarks and the cost curves on an accelerator and writes their tables.
#
#   pip install -U "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"  # once, GPU hosts
#   benchmarks/gpu.sh [OUT_DIR] [--quick]        # OUT_DIR defaults to results/gpu
#   PLATFORM=tpu benchmarks/gpu.sh results/tpu   # any JAX platform: cuda (default), rocm, tpu
#
# Writes OUT_DIR/bench.txt (benchmarks/bench.py's tables), bench.json, scaling.json, scaling.md
# (the cost curves' points and exponents) and scaling_<curve>.png. Real data comes from
# $FLIG_DATA_DIR when it holds digit69 and cowley_v4; otherwise the synthetic config is timed.
# Nothing here runs in CI: it stops unless JAX sees the requested accelerator.
set -euo pipefail

cd "$(dirname "$0")/.."
out="results/gpu"
quick=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick="--quick" ;;
    -*) echo "error: benchmarks/gpu.sh: unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
platform="${PLATFORM:-cuda}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! JAX_PLATFORMS="$platform" python -c 'import jax; jax.devices()' >/dev/null 2>&1; then
  echo "error: benchmarks/gpu.sh: JAX sees no '$platform' device (JAX_PLATFORMS=$platform);" \
       "install the accelerator build of jax on a machine that has one" >&2
  exit 1
fi
mkdir -p "$out"
JAX_PLATFORMS="$platform" python -c 'import jax; print("devices:", jax.devices())' | tee "$out/devices.txt"

configs="synthetic"
if [[ -d "${FLIG_DATA_DIR:-/nonexistent}/digit69" && -d "${FLIG_DATA_DIR:-/nonexistent}/cowley_v4" ]]; then
  configs="fmri,spikes"
fi
steps=20
[[ -n "$quick" ]] && steps=5
JAX_PLATFORMS="$platform" python benchmarks/bench.py --configs "$configs" --steps "$steps" \
  --out "$out/bench.json" | tee "$out/bench.txt"

python benchmarks/scaling.py --device "$platform" $quick \
  --out "$out/scaling.json" --md "$out/scaling.md" --plots "$out" | tee "$out/scaling.txt"
echo "wrote $out/{devices.txt,bench.txt,bench.json,scaling.json,scaling.md,scaling_*.png}"
