"""`gpunet bench --isolated K`: each library alone in its own process, alternated, merged into one table.

Why: on a small machine two libraries in one process fight for the cores (NumPy's OpenBLAS pthreads and
oneDNN's / PyTorch's OpenMP teams spin after their work; PyTorch measured 4x slower beside gpunet than
alone). The in-process run (timing.measure) pauses between sides to soften this; this mode removes it.

    round 0: gpunet process, torch process      (each: `gpunet bench --side S`, its own --reps per row)
    round 1: torch process, gpunet process      (order alternates, so a drifting machine hits both)
    ...

Each process writes its results.json; a row's side time is the median over the K processes of their
per-process medians (q1/q3/iqr over those K values too, `process_medians` lists them), the min is the
smallest call seen. Memory rows take the median peak. Round 0's processes dump each row's first outputs,
and the merged row's `check` compares the two processes' files exactly as the in-process check does
(output_diffs), so a row still proves that both sides computed the same thing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpunet.bench import workloads
from gpunet.bench.machine import loadavg
from gpunet.bench.runner import derive, load_outputs, output_diffs, select_rows

SIDE_ORDER = (("gpunet", "torch"), ("torch", "gpunet"))


def _side_cmd(side: str, device: str, out: Path, quick: bool, reps, only, dump) -> list[str]:
    cmd = [sys.executable, "-m", "gpunet", "bench", "--side", side, "--device", device, "--out", str(out)]
    if quick:
        cmd.append("--quick")
    if reps is not None:
        cmd += ["--reps", str(reps)]
    if only:
        cmd += ["--only", only]
    if dump is not None:
        cmd += ["--dump", str(dump)]
    return cmd


def _side_env(side: str) -> dict:
    """The child's environment: PyTorch's process without the thread-pool defaults that gpunet put into
    this process's environment (gpunet.threads), so the peer runs with its own defaults."""
    env = dict(os.environ)
    if side == "torch":
        from gpunet.threads import set_by_gpunet
        for var in set_by_gpunet():
            env.pop(var, None)
    return env


def _run_side(cmd: list[str], log) -> dict:
    log("$ " + " ".join(cmd[1:]))
    side = cmd[cmd.index("--side") + 1]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_side_env(side))
    if proc.returncode != 0:
        raise RuntimeError(f"bench --isolated: `{' '.join(cmd[1:])}` exited {proc.returncode}:\n"
                           + proc.stderr[-4000:])
    out = Path(cmd[cmd.index("--out") + 1]) / "results.json"
    return json.loads(out.read_text())


def _merge_side(values: list[dict], unit: str) -> dict | None:
    values = [v for v in values if v]
    if not values:
        return None
    if unit == "MiB":
        peaks = [v["peak"] for v in values]
        return {"peak": float(np.median(peaks)), "process_peaks": peaks}
    meds = np.asarray([v["median"] for v in values], dtype=np.float64)
    q1, med, q3 = np.percentile(meds, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(min(v["min"] for v in values)), "reps": int(sum(v["reps"] for v in values)),
            "process_medians": [float(m) for m in meds]}


def merge(runs: dict, rows, dump: Path | None, judge: bool = True, device_kind: str = "cpu") -> tuple[list[dict], dict]:
    """(merged row results, merged sgemm) from runs = {"gpunet": [results...], "torch": [results...]}."""
    gemm = {"n": None, "dtype": "float32"}
    for side, key in (("gpunet", "numpy_gflops"), ("gpunet", "device_gflops"), ("torch", "torch_gflops")):
        vals = [g[key] for r in runs[side] for g in r["sgemm_runs"] if g.get(key)]
        if vals:
            gemm[key] = max(vals)   # the best run is the yardstick, as in one process
    gemm["n"] = runs["gpunet"][0]["sgemm"]["n"]
    gemm["reference_gflops"] = gemm.get("device_gflops", gemm.get("numpy_gflops"))
    merged = []
    for i, row in enumerate(rows):
        per = {side: [r["rows"][i] for r in runs[side]] for side in ("gpunet", "torch")}
        for side, rs in per.items():
            if any(r["id"] != row.id for r in rs):
                raise RuntimeError(f"bench --isolated: the {side} processes ran other rows than expected ({row.id})")
        res = {"id": row.id, "group": row.group, "name": row.name, "phase": row.phase, "unit": row.unit,
               "shape": row.shape, "errors": {}}
        for side, rs in per.items():
            res[side] = _merge_side([r.get(side) for r in rs], row.unit)
            for r in rs:
                for k, v in r["errors"].items():
                    res["errors"].setdefault(k, v)
        files = [dump / f"{row.id}.{side}.npz" for side in ("gpunet", "torch")] if dump else []
        if row.unit != "MiB" and files and all(f.exists() for f in files):
            res["check"] = output_diffs(load_outputs(files[0]), load_outputs(files[1]))
            res["check_l2_rel_diff"] = max(res["check"]["l2_rel"], default=0.0)
        merged.append(derive(res, row, gemm["reference_gflops"], judge, device_kind))
    return merged, gemm


def run_isolated(device: str = "cpu", rounds: int = 3, quick: bool = False, reps: int | None = None,
                 only: str | None = None, log=None) -> dict:
    """Run `rounds` x (one gpunet process, one torch process), alternating, and merge (module docstring)."""
    log = log or (lambda line: None)
    if rounds < 1:
        raise ValueError(f"bench: --isolated needs at least 1 round, got {rounds}")
    rows = select_rows(workloads.quick_rows() if quick else workloads.full_rows(), only)
    started = time.perf_counter()
    load_start = loadavg()
    runs: dict = {"gpunet": [], "torch": []}
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-") as tmp:
        tmp = Path(tmp)
        dump = tmp / "outputs"
        dump.mkdir()
        for k in range(rounds):
            for side in SIDE_ORDER[k % 2]:
                out = tmp / f"{side}-{k}"
                runs[side].append(_run_side(_side_cmd(side, device, out, quick, reps, only,
                                                      dump if k == 0 else None), log))
                log(f"round {k + 1}/{rounds}: {side} done ({time.perf_counter() - started:.0f}s)")
        first = runs["gpunet"][0]
        judge = first["device"] != "emulator"
        merged, gemm = merge(runs, rows, dump, judge, "gpu" if first["device"] == "cupy" else "cpu")
    machine = dict(first["machine"])
    machine["torch"] = runs["torch"][0]["machine"].get("torch")
    machine["loadavg"] = load_start
    return {
        "schema": first["schema"],
        "device": first["device"],
        "cpu_engine": first.get("cpu_engine"),
        "torch_device": runs["torch"][0]["torch_device"],
        "quick": bool(quick),
        "side": "isolated",
        "rounds": rounds,
        "reps": first["reps"],
        "warmup": first["warmup"],
        "only": only,
        "timing": f"each library alone in its own process, {rounds} process(es) per side, alternating "
                  f"(gpunet first in even rounds, torch first in odd); per process, the median over "
                  f"{first['reps']} timed calls (after warm-up); a row's time is the median of its "
                  f"processes' medians; check: round 0's first outputs of the two processes compared",
        "settle_s": first["settle_s"],
        "ratio": "gpunet / PyTorch (median time, or peak memory); < 1 means gpunet is faster/smaller",
        "machine": machine,
        "sgemm": gemm,
        "sgemm_runs": [{k: v for k, v in g.items() if k.endswith("gflops")}
                       for side in ("gpunet", "torch") for r in runs[side] for g in r["sgemm_runs"]],
        "targets": first["targets"],
        "notes": [f"isolated: {rounds} gpunet and {rounds} PyTorch processes, alternated "
                  f"(gpunet.bench.isolated); IQR is over the processes' medians"],
        "rows": merged,
        "seconds": time.perf_counter() - started,
        "loadavg_at_end": loadavg(),
    }
