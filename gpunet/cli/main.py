"""`gpunet` entry point: argparse with one sub-command per module of `gpunet.cli`.

Expected failures (missing data, bad checkpoint, divergence, unusable device, missing kernel sources, OS
errors such as a full disk) print one line naming the problem and exit with status 1; set GPUNET_DEBUG=1 to
see the traceback instead. Ctrl-C exits 130 and SIGTERM 143, both after the same clean-up."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading

import gpunet.cli

ENVIRONMENT = """environment variables:
  GPUNET_DEVICE      what --device auto means: cpu, cuda or emulator (an explicit --device wins)
  GPUNET_CPU_ENGINE  the CPU backend's engine: numpy, onednn or auto (default: oneDNN when it loads)
  GPUNET_DATA        the dataset download cache (default ~/.cache/gpunet; one folder per dataset)
  GPUNET_DATA_URL    a mirror to download datasets from instead: <url>/<dataset>/<file>
  GPUNET_KERNEL_DIR  the folder of the CUDA kernel sources (.cu) to load instead of cuda_kernels/
  GPUNET_DEBUG       when set (e.g. to 1): show the full traceback instead of a one-line error"""

FIRST = ("train", "eval", "info")  # listed first in --help; other commands follow alphabetically


def command_modules() -> list:
    """Every module of gpunet.cli that defines add_parser(subparsers), FIRST ones first."""
    names = [m.name for m in pkgutil.iter_modules(gpunet.cli.__path__)
             if not m.name.startswith("_") and m.name != "main"]
    names.sort(key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n))
    mods = [importlib.import_module(f"gpunet.cli.{n}") for n in names]
    return [m for m in mods if hasattr(m, "add_parser")]


def build_parser() -> argparse.ArgumentParser:
    from gpunet import __version__
    parser = argparse.ArgumentParser(
        prog="gpunet", description="Deep learning on CuPy with a NumPy fallback. `gpunet train` trains a small CNN "
                                   "on the embedded digits dataset, offline.",
        epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in command_modules():
        mod.add_parser(sub)
    return parser


def describe(e: BaseException, args=None) -> str:
    """The one-line message of an expected failure. An OSError from the system (errno set) names its path:
    'runs/a/history.json: No space left on device'; an optimizer's hyper-parameter error names the command's
    option of that name: '--lr nan: Adam: invalid lr nan (...)'; the library's other errors carry their own."""
    from gpunet.optim import HyperParameterError
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{where}: {e.strerror}" if where else e.strerror
    if isinstance(e, HyperParameterError) and args is not None and hasattr(args, e.name):
        return f"--{e.name.replace('_', '-')} {e.value}: {e}"
    return str(e)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same clean-up runs (temporary files removed, checkpoint kept)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from gpunet.backend import DeviceError
    from gpunet.checkpoint import CheckpointError
    from gpunet.data import DataUnavailableError, IDXError
    from gpunet.data.cifar import CIFARError
    from gpunet.training.trainer import TrainingError
    try:
        return int(args.func(args) or 0)
    except (DeviceError, CheckpointError, DataUnavailableError, IDXError, CIFARError, TrainingError, ValueError,
            ImportError, OSError) as e:
        if os.environ.get("GPUNET_DEBUG"):  # developers: the full traceback
            raise
        print(f"gpunet {args.command}: error: {describe(e, args)}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"gpunet {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"gpunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
