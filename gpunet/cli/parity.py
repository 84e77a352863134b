"""`gpunet parity`: train the same model on NumPy and on a device, and compare them layer by layer.

The model is built on NumPy, its state_dict copied to the device, and both run K identical training
steps (forward, softmax cross-entropy, backward, optimizer step) on the same digits batches. The table
lists, per module, the largest absolute and relative differences of its output, of the gradient w.r.t.
its input, of its parameters' gradients and values and of its buffers (batch-norm running statistics),
each at its worst step, with the tolerance used and PASS/FAIL. Exit status 0 when every row passes,
1 when one fails (or the run could not start).

Free-running (the default), the two models drift apart step by step and tolerances grow with the step;
after many steps a ReLU input rounded across 0 on one device only flips that element's gradient (the
summary notes it). --lockstep restarts every step from NumPy's state, for long runs.

The reference is always the CPU backend on its NumPy engine (whatever GPUNET_CPU_ENGINE says).
--device cpu compares the CPU backend on --cpu-engine with it: onednn (oneDNN's convolutions) differs
in float32's last bits like a device, and is exactly 0 in float64 (oneDNN has no f64: every op runs
NumPy's code); numpy is a self-check, exactly 0. --cpu-engine with cuda or the emulator is an error.

relative difference = max|ref - dev| / (max|ref| + tiny), over the whole tensor. A row passes when it is
<= tol or when max|ref - dev| <= atol. Tolerances at step 1 (step k allows k times as much):
{tols}
With Adam, parameters also pass within lr per step (it divides by each element's own gradient).

Why float32 is not bit-exact: the device's tiled GEMM and NumPy's BLAS add the same products in
different orders, each rounding differently (within K*2**-24 of the exact sum); batch-norm backward
subtracts nearly equal numbers, which magnifies relative error; and every step's weight differences
feed the next step, so differences grow with depth and with K. float64 (u = 2**-53) runs the same
kernels and must agree about eight orders of magnitude more closely. Details: docs/parity.md.
"""
from __future__ import annotations

import argparse
import sys

HELP = "check that a device trains exactly like NumPy: per-layer differences after K training steps"


def _doc() -> str:
    from gpunet.parity import ATOL, TOLERANCES

    lines = [f"  {dt}: " + ", ".join(f"{k} {v:g}" for k, v in tols.items()) + f"; atol {ATOL[dt]:g}"
             for dt, tols in TOLERANCES.items()]
    return __doc__.format(tols="\n".join(lines))


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_cpu_engine, add_device
    from gpunet.models import MODELS
    from gpunet.parity import OPTIMIZERS
    p = subparsers.add_parser("parity", help=HELP, description=_doc(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device(p)
    p.add_argument("--no-gpu", choices=("emulator", "cpu"), default="emulator",
                   help="what --device auto compares with NumPy when no GPU is usable: the CPU emulator of our CUDA "
                        "kernels, or the CPU backend on --cpu-engine (as --device cpu) (default: %(default)s)")
    add_cpu_engine(p, " compared with the NumPy reference, for --device cpu only: onednn (float32 differs in the "
                      "last bits; float64 must be exactly 0), numpy (a self-check: exactly 0) or auto")
    p.add_argument("--model", choices=MODELS, default="cnn", help="default: %(default)s")
    p.add_argument("--steps", type=int, default=3, metavar="K", help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed for the weights and the batch order (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64 checks the kernels' logic to ~1e-10 (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="momentum",
                   help="momentum = SGD with momentum 0.9 (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per optimizer)")
    p.add_argument("--tol-scale", type=float, default=1.0, metavar="F",
                   help="multiply every relative tolerance by F (default: %(default)s)")
    p.add_argument("--lockstep", action="store_true",
                   help="give the device NumPy's weights, buffers and optimizer state before every step: each step "
                        "is compared from identical state and tolerances do not grow (for long runs: free-running "
                        "float32 training drifts apart, see docs/parity.md)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON")
    p.add_argument("--failures-only", action="store_true", help="print only the failing rows and the summary")
    p.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from gpunet.parity import run_parity

    device = {"cpu": "numpy"}.get(args.device, args.device)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_parity(args.model, device, args.steps, batch_size=args.batch_size, seed=args.seed,
                        dtype=args.dtype, optimizer=args.optimizer, lr=args.lr, tol_scale=args.tol_scale,
                        lockstep=args.lockstep, no_gpu={"cpu": "numpy"}.get(args.no_gpu, args.no_gpu),
                        cpu_engine=args.cpu_engine, log=log)
    if not (args.failures_only and report.passed):
        print(report.table(only_failures=args.failures_only))
    print(report.summary())
    if args.json:
        print(f"report: {report.save_json(args.json)}")
    sys.stdout.flush()
    return 0 if report.passed else 1
