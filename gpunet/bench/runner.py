"""Run the benchmark rows on one device, gpunet and PyTorch side by side in this process.

    results = run_bench("cpu", quick=True)         # a dict, the content of results.json
    print(format_table(results))

Per row: set up the inputs, call each side once and compare the outputs (`check`), warm up, then time
`reps` calls of each side in alternating blocks (see timing.measure), synchronising the device around
every call. A row that raises records its error and the run goes on. The same run also times a
2048x2048 float32 matmul (sgemm) with NumPy, with the device's array module and with PyTorch, the
yardstick for the conv rows' GFLOP/s.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import sys
import time
import tracemalloc

import numpy as np

from gpunet.backend import ALIASES, get_backend, to_host
from gpunet.bench import workloads
from gpunet.bench.machine import loadavg, machine_info
from gpunet.bench.timing import measure

SCHEMA = 1
SGEMM_N = 2048
SETTLE_S = 0.2        # pause before each side's block on a CPU (see timing: the other pool's threads spin)
NOISY = 0.25          # IQR / median above which a side's timing is marked noisy
CHECK_TOL = 1e-2       # a row whose outputs differ more than this (l2_rel, see output_diffs) is flagged


def default_reps(backend, quick: bool) -> tuple[int, int]:
    """(timed reps, extra warm-up calls) per side; the output check is one more untimed call."""
    if quick:
        return 3, 1
    return (25, 5) if backend.is_gpu else (10, 1)


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def torch_settings(torch, on_gpu: bool):
    """On a GPU: cuDNN autotuning on, TF32 off (both sides compute in full float32); restored afterwards."""
    if torch is None or not on_gpu:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = old


def select_rows(rows, only: str | None):
    """Rows whose id or name matches one of the comma-separated patterns (glob, or else substring),
    case-insensitively."""
    if not only:
        return list(rows)
    pats = [p.strip().lower() for p in only.split(",") if p.strip()]

    def hit(row, pat):
        keys = (row.id, f"{row.name} {row.phase}".lower(), row.group)
        if any(ch in pat for ch in "*?["):
            return any(fnmatch.fnmatchcase(k, pat) for k in keys)
        return any(pat in k for k in keys)
    chosen = [r for r in rows if any(hit(r, p) for p in pats)]
    if not chosen:
        raise ValueError(f"bench: --only {only!r} matches no row; rows are: {', '.join(r.id for r in rows)}")
    return chosen


# --- yardstick --------------------------------------------------------------------------------------

def sgemm(backend, torch, torch_device: str, reps: int, settle: float = 0.0, side: str = "both") -> dict:
    """GFLOP/s of a SGEMM_N^3 float32 matmul: NumPy and the device's array module (unless side is
    "torch"), and PyTorch (when given)."""
    n, flops = SGEMM_N, 2.0 * SGEMM_N ** 3
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    fns, sync = ({"numpy": lambda: a @ b} if side != "torch" else {}), {}
    if backend.is_gpu and side != "torch":
        da, db = backend.asarray(a), backend.asarray(b)
        fns["device"], sync["device"] = (lambda: da @ db), backend.synchronize
    if torch is not None and (torch_device == "cpu" or torch.cuda.is_available()):
        ta, tb = torch.from_numpy(a).to(torch_device), torch.from_numpy(b).to(torch_device)
        fns["torch"] = lambda: ta @ tb
        if torch_device != "cpu":
            sync["torch"] = torch.cuda.synchronize
    stats = measure(fns, reps=reps, warmup=2, sync=sync, settle=settle)
    out = {"n": n, "dtype": "float32"}
    out.update({f"{k}_gflops": flops / s.median / 1e9 for k, s in stats.items()})
    out.update({f"{k}_ms": s.to_dict() for k, s in stats.items()})
    out["reference_gflops"] = out.get("device_gflops", out.get("numpy_gflops"))  # what % of sgemm divides by
    return out


# --- peak memory of one call ------------------------------------------------------------------------

def peak_gpunet(backend, fn) -> int:
    """Bytes allocated above the starting level at the peak of fn(): tracemalloc (NumPy's allocations)
    on the CPU, a CuPy memory-pool hook on a GPU."""
    if backend.is_gpu:
        from cupy.cuda.memory_hook import MemoryHook

        class Peak(MemoryHook):
            name = "gpunet-bench-peak"

            def __init__(self):
                self.live = self.peak = 0

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                self.live += mem_size
                self.peak = max(self.peak, self.live)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                self.live -= mem_size

        hook = Peak()
        backend.synchronize()
        with hook:
            fn()
            backend.synchronize()
        return hook.peak
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop chatter) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_torch(torch, device: str, fn) -> int:
    """The same measure for PyTorch: the CUDA caching allocator's peak statistics on a GPU; on the CPU,
    the running sum of the allocation events the profiler records (its CPU allocator is invisible to
    tracemalloc)."""
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# --- one row ----------------------------------------------------------------------------------------

def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in _flatten(o)]
    return [] if out is None else [out]


def output_diffs(g_out, t_out) -> dict:
    """Per output, two relative differences against the PyTorch side t:
    max_rel = max|g - t| / max|t| and l2_rel = ||g - t||_2 / ||t||_2 (inf for a count or shape mismatch).

    The check judges l2_rel: two sides computing different things (a wrong layout, padding or stride)
    differ by O(1), while float32 rounding can legitimately move a few elements a lot. A conv
    pre-activation within rounding of 0 (1.6e-7 in one measured row) is ReLU'd to 0 on one side only;
    that one masked pixel shifts dx by ~5% of its max, dw by ~0.7%, yet l2_rel stays ~1e-3."""
    g_list, t_list = _flatten(g_out), _flatten(t_out)
    if len(g_list) != len(t_list):
        return {"max_rel": [math.inf], "l2_rel": [math.inf]}
    out = {"max_rel": [], "l2_rel": []}
    for g, t in zip(g_list, t_list):
        g, t = to_host(g).astype(np.float64).ravel(), to_host(t).astype(np.float64).ravel()
        if g.shape != t.shape:
            out["max_rel"].append(math.inf)
            out["l2_rel"].append(math.inf)
        elif g.size:
            d = g - t
            out["max_rel"].append(float(np.max(np.abs(d))) / (float(np.max(np.abs(t))) + 1e-30))
            out["l2_rel"].append(float(np.linalg.norm(d)) / (float(np.linalg.norm(t)) + 1e-30))
    return out


def check_outputs(g_out, t_out) -> float:
    """The largest l2_rel of output_diffs: 0 when both sides agree exactly."""
    return max(output_diffs(g_out, t_out)["l2_rel"], default=0.0)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _host(a) -> np.ndarray:
    if hasattr(a, "detach"):   # a torch tensor
        return a.detach().cpu().numpy()
    return to_host(a)


def dump_outputs(path, out) -> None:
    """One side's first outputs of a row, in order, as arr_0, arr_1, ... of an .npz (isolated runs compare
    the two processes' files with output_diffs)."""
    np.savez(path, *[_host(a) for a in _flatten(out)])


def load_outputs(path) -> list:
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def run_row(row, env, reps: int, warmup: int, side: str = "both", dump=None) -> dict:
    """Set up, check and time (or measure the memory of) one row; errors are recorded, not raised.
    side "gpunet" or "torch" runs that side only (no check; `dump`, a folder, receives its first outputs
    as <row id>.<side>.npz)."""
    be, torch = env.backend, env.torch
    res = {"id": row.id, "group": row.group, "name": row.name, "phase": row.phase, "unit": row.unit,
           "shape": row.shape, "gpunet": None, "torch": None, "errors": {}}
    try:
        g, t = row.setup(env)
    except Exception as e:
        res["errors"]["setup"] = _err(e)
        return res
    sides = {"gpunet": g}
    if t is not None:
        sides["torch"] = t
    if side != "both":
        sides = {k: v for k, v in sides.items() if k == side}
    sync = {"gpunet": be.synchronize}
    if t is not None and env.torch_device != "cpu":
        sync["torch"] = torch.cuda.synchronize
    first = {}
    for name, fn in list(sides.items()):  # the first call: compile/autotune, and outputs for the check
        try:
            first[name] = fn()
            sync.get(name, lambda: None)()
        except Exception as e:
            res["errors"][name] = _err(e)
            del sides[name]
    if "gpunet" in first and "torch" in first and row.unit != "MiB":  # memory rows reuse a trained pair
        res["check"] = output_diffs(first["gpunet"], first["torch"])
        res["check_l2_rel_diff"] = max(res["check"]["l2_rel"], default=0.0)
    if dump is not None and row.unit != "MiB":
        for name, out in first.items():
            dump_outputs(os.path.join(dump, f"{row.id}.{name}.npz"), out)
    first.clear()
    if not sides:
        return res
    if row.unit == "MiB":
        if "gpunet" in sides:
            res["gpunet"] = {"peak": peak_gpunet(be, sides["gpunet"]) / 2**20}
        if "torch" in sides:
            res["torch"] = {"peak": peak_torch(torch, env.torch_device, sides["torch"]) / 2**20}
        return res
    stats = measure(sides, reps=reps, warmup=warmup, sync=sync, settle=env.settle)
    for name, s in stats.items():
        res[name] = s.to_dict()
    return res


def derive(res: dict, row, sgemm_gflops: float | None, judge: bool = True, device_kind: str = "cpu") -> dict:
    """Add ratio, GFLOP/s, % of sgemm and the target verdict to a row result. judge=False (the emulator,
    whose times say nothing about a GPU) keeps the numbers but checks no performance target; device_kind
    ("cpu" or "gpu") picks workloads.TARGETS."""
    key = "peak" if row.unit == "MiB" else "median"
    g, t = res.get("gpunet"), res.get("torch")
    res["ratio"] = g[key] / t[key] if g and t and t[key] > 0 else None
    if row.unit == "ms":
        # min / min resists bursts of load from other processes better than the medians; a side whose IQR
        # exceeds NOISY of its median ran on a busy machine, and its row deserves a rerun.
        res["ratio_of_mins"] = g["min"] / t["min"] if g and t and t["min"] > 0 else None
        res["noisy"] = any(v["iqr"] > NOISY * v["median"] for v in (g, t) if v)
    if row.flops is not None:
        res["flops"] = row.flops
        res["gflops"] = {side: row.flops / (v["median"] / 1e3) / 1e9 if v else None
                         for side, v in (("gpunet", g), ("torch", t))}
        if sgemm_gflops:
            res["pct_sgemm"] = {side: 100.0 * v / sgemm_gflops if v else None for side, v in res["gflops"].items()}
    res["target"] = {k: v for k, v in (("max_ratio", workloads.target_ratio(row, device_kind)),
                                       ("min_pct_sgemm", row.target_pct_sgemm))
                     if v is not None and judge}
    misses = []
    target = res["target"]
    if "max_ratio" in target and res["ratio"] is not None and res["ratio"] > target["max_ratio"]:
        misses.append(f"ratio {res['ratio']:.2f} > {target['max_ratio']:g}")
    pct = (res.get("pct_sgemm") or {}).get("gpunet")
    if "min_pct_sgemm" in target and pct is not None and pct < target["min_pct_sgemm"]:
        misses.append(f"{pct:.0f}% of sgemm < {target['min_pct_sgemm']:g}%")
    if res["errors"]:
        misses.append("error")
    check = res.get("check_l2_rel_diff")
    if check is not None and not check <= CHECK_TOL:
        misses.append(f"outputs differ (l2 rel {check:.1e})")
    judged = target and (res["ratio"] is not None or pct is not None)
    res["misses"] = misses
    res["meets"] = (not misses) if (judged or misses) else None
    return res


# --- the run ----------------------------------------------------------------------------------------

SIDES = ("both", "gpunet", "torch")


def run_bench(device: str = "cpu", quick: bool = False, reps: int | None = None, only: str | None = None,
              log=None, side: str = "both", dump=None) -> dict:
    """Run the benchmark on `device` (cpu, cuda, emulator or auto) and return the results dict.
    log: a callable receiving one progress line per row, or None. side "gpunet" / "torch": only that
    library runs in this process (gpunet alone does not even import torch), for gpunet.bench.isolated,
    which runs each side in its own processes and merges; `dump`: a folder for each row's first outputs."""
    log = log or (lambda line: None)
    if side not in SIDES:
        raise ValueError(f"bench: side must be one of {SIDES}, got {side!r}")
    if str(device).lower() not in ALIASES:
        raise ValueError(f"bench: unknown device {device!r}; expected one of cpu, cuda, emulator, auto")
    # PyTorch first: its own OpenMP runtime then starts before gpunet's engines set any thread-pool
    # defaults in the environment (gpunet.threads), so the peer runs as it does alone
    torch = None if side == "gpunet" else _import_torch()
    backend = get_backend(str(device).lower())
    default_r, warmup = default_reps(backend, quick)
    reps = default_r if reps is None else int(reps)
    if reps < 1:
        raise ValueError(f"bench: --reps must be >= 1, got {reps}")
    notes = []
    torch_device = "cuda" if backend.is_gpu else "cpu"
    if side == "torch" and torch is None:
        raise RuntimeError("bench: side 'torch' needs PyTorch (pip install 'gpunet[bench]')")
    if side != "both":
        notes.append(f"only the {side} side ran in this process")
    elif torch is None:
        notes.append("PyTorch is not installed: gpunet rows ran alone (pip install 'gpunet[bench]' for ratios)")
    elif backend.is_gpu and not torch.cuda.is_available():
        notes.append(f"PyTorch {torch.__version__} has no CUDA here: gpunet rows ran alone (a CPU PyTorch "
                     f"is no comparison for a GPU)")
        torch = None
    if backend.name == "emulator":
        notes.append("emulator: gpunet runs the CUDA kernels on the CPU emulator; times measure the emulator, "
                     "not a GPU, so no target is checked (useful to test the CUDA op path end to end)")
    rows = select_rows(workloads.quick_rows() if quick else workloads.full_rows(), only)
    judge = backend.name != "emulator"
    kind = "gpu" if backend.is_gpu else "cpu"
    settle = 0.0 if backend.is_gpu or quick else SETTLE_S  # --quick checks the harness, not the speed

    started = time.perf_counter()
    backend.ops  # the ops' process setup (NumPy: malloc thresholds) holds for every row and is recorded
    with torch_settings(torch, backend.is_gpu):
        machine = machine_info(torch)
        log(f"sgemm {SGEMM_N}x{SGEMM_N} float32 ...")
        gemm = sgemm(backend, torch, torch_device, max(reps, 5), settle, side)
        gemm_runs = [gemm]
        env = workloads.Env(backend, torch, torch_device, np.random.default_rng(0), settle)
        results = []
        for i, row in enumerate(rows, 1):
            t0 = time.perf_counter()
            res = derive(run_row(row, env, reps, warmup, side, dump), row, gemm["reference_gflops"], judge, kind)
            results.append(res)
            log(f"[{i}/{len(rows)}] {row.name} {row.phase}: {_summary(res)} ({time.perf_counter() - t0:.1f}s)")
        if not quick:  # again at the end: the faster of the two runs is the yardstick (a busy start cannot flatter)
            log(f"sgemm {SGEMM_N}x{SGEMM_N} float32 again ...")
            gemm_runs.append(sgemm(backend, torch, torch_device, max(reps, 5), settle, side))
            best = max(gemm_runs, key=lambda g: g["reference_gflops"] or g.get("torch_gflops") or 0.0)
            if best is not gemm:
                for res, row in zip(results, rows):
                    derive(res, row, best["reference_gflops"], judge, kind)
            gemm = best
    return {
        "schema": SCHEMA,
        "device": backend.name,
        "cpu_engine": getattr(backend, "cpu_engine", None),   # the NumPy backend's engine (numpy/onednn)
        "torch_device": torch_device if torch is not None else None,
        "quick": bool(quick),
        "side": side,
        "reps": reps,
        "warmup": warmup + 1,
        "only": only,
        "timing": "median over reps of one call each, in 2 alternating blocks per side (gpunet, torch, gpunet, "
                  "torch), each block opened by a pause (settle_s, CPU only) and an untimed call; device "
                  "synchronised around every call; the first call of each side is untimed and checks the outputs",
        "settle_s": settle,
        "ratio": "gpunet / PyTorch (median time, or peak memory); < 1 means gpunet is faster/smaller",
        "machine": machine,
        "sgemm": gemm,
        "sgemm_runs": [{k: v for k, v in g.items() if k.endswith("gflops")} for g in gemm_runs],
        "targets": {"max_ratio": workloads.TARGETS[kind], "big_3x3_min_pct_sgemm": workloads.BIG_3X3_PCT_SGEMM},
        "notes": notes,
        "rows": results,
        "seconds": time.perf_counter() - started,
        "loadavg_at_end": loadavg(),
    }


def _summary(res: dict) -> str:
    if res["errors"]:
        return "; ".join(f"{k} error: {v}" for k, v in res["errors"].items())
    key, unit = ("peak", "MiB") if res["unit"] == "MiB" else ("median", "ms")
    parts = [f"{side} {res[side][key]:.2f} {unit}" for side in ("gpunet", "torch") if res[side]]
    if res["ratio"] is not None:
        parts.append(f"ratio {res['ratio']:.2f}")
    return ", ".join(parts)
