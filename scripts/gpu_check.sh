#!/usr/bin/env bash
# gpu_check.sh -- one command that records what a real GPU machine says about gpunet.
#
#   scripts/gpu_check.sh [OUTDIR]        (default OUTDIR: benchmarks/results/gpu-<UTC date-time>)
#
# Runs from a checkout without installing anything and without network (PYTHONPATH=<checkout>);
# PYTHON overrides the interpreter (default python3). Every step runs even when an earlier one fails;
# each step's output goes to OUTDIR/<step>.log and its exit status to OUTDIR/exit_codes.tsv, and
# OUTDIR/summary.txt lists them. Steps:
#   nvidia-smi         nvidia-smi, and nvidia-smi -q
#   versions           python, numpy, cupy, CUDA runtime and driver, NVRTC, torch, the GPU cupy sees
#   info               gpunet info
#   nvrtc              python -m gpunet.cuda.nvrtc (every kernel for compute_80 and compute_90)
#   pytest             GPUNET_TEST_BACKENDS=numpy,cupy pytest -m "not slow" (the full fast suite)
#   pytest-emulator    the CUDA-kernel tests on the emulator too (a kernel's two executions must agree)
#   parity-cnn         gpunet parity --device cuda (default CNN)
#   parity-resnet      gpunet parity --device cuda --model resnet-small
#   bench              gpunet bench --device cuda --out OUTDIR/bench
#   nccl               scripts/nccl_check.py on one rank per GPU (mpiexec when present; needs mpi4py): the NCCL
#                      path of gpunet.distributed (unique id over MPI, allReduce, broadcast) for real
# Exit status: 0 when every step that ran passed, 1 otherwise (the logs say which).
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
GPUNET=("$PY" -m gpunet.cli.main)

: > "$OUT/exit_codes.tsv"
failed=0

# step NAME CMD...: run CMD with stdout+stderr to NAME.log, record and report its exit status.
step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%ss\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$*" >> "$OUT/exit_codes.tsv"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "   FAILED (exit $rc) after $((SECONDS - start))s; last lines of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    else
        echo "   ok ($((SECONDS - start))s)"
    fi
    return 0
}

versions() {
    "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.replace("\n", " "))
print("platform", platform.platform())
try:
    import numpy
    print("numpy", numpy.__version__)
except Exception as e:
    print("numpy: unavailable:", e)
try:
    import cupy
    print("cupy", cupy.__version__)
    rt = cupy.cuda.runtime
    print("CUDA runtime", rt.runtimeGetVersion())
    print("CUDA driver", rt.driverGetVersion())
    try:
        print("NVRTC", cupy.cuda.nvrtc.getVersion())
    except Exception as e:
        print("NVRTC (cupy): unavailable:", e)
    for i in range(rt.getDeviceCount()):
        p = rt.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        print(f"device {i}: {name}, compute capability {p['major']}.{p['minor']}, "
              f"{p['multiProcessorCount']} SMs, {p['totalGlobalMem'] / 2**30:.1f} GiB")
except Exception as e:
    print("cupy: unavailable:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except Exception as e:
    print("torch: unavailable:", e)
EOF
}

echo "gpu_check: $(date -u) in $ROOT -> $OUT"
git -C "$ROOT" log -1 --format='commit %H %s' > "$OUT/commit.txt" 2>&1 || true
git -C "$ROOT" status --short >> "$OUT/commit.txt" 2>&1 || true

if command -v nvidia-smi > /dev/null 2>&1; then
    step nvidia-smi nvidia-smi
    step nvidia-smi-q nvidia-smi -q
else
    echo "nvidia-smi not found" > "$OUT/nvidia-smi.log"
    printf 'nvidia-smi\t127\t0s\tnot found\n' >> "$OUT/exit_codes.tsv"
    failed=1
    echo "== nvidia-smi: not found"
fi
step versions versions
step info "${GPUNET[@]}" info
step nvrtc "$PY" -m gpunet.cuda.nvrtc
step pytest env GPUNET_TEST_BACKENDS=numpy,cupy "$PY" -m pytest -m "not slow" -q -p no:cacheprovider \
    --junitxml="$OUT/pytest.xml"
step pytest-emulator env GPUNET_TEST_BACKENDS=emulator "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_*.py
step parity-cnn "${GPUNET[@]}" parity --device cuda --json "$OUT/parity-cnn.json"
step parity-resnet "${GPUNET[@]}" parity --device cuda --model resnet-small --json "$OUT/parity-resnet.json"
step bench "${GPUNET[@]}" bench --device cuda --out "$OUT/bench"
NGPU=$("$PY" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null || echo 1)
if command -v mpiexec > /dev/null 2>&1; then
    step nccl env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpiexec -n "$NGPU" "$PY" scripts/nccl_check.py
else
    step nccl "$PY" scripts/nccl_check.py   # a singleton MPI process: one rank
fi

{
    echo "gpu_check $(date -u) commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
    printf 'step\texit\ttime\tcommand\n'
    cat "$OUT/exit_codes.tsv"
} > "$OUT/summary.txt"
echo "gpu_check: results in $OUT"
cat "$OUT/summary.txt"
exit "$failed"
