"""Presenting a benchmark run: the text table, results.json, results.md and the ratio bar chart."""
from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = ("row", "phase", "gpunet", "torch", "ratio", "target", "GFLOP/s gpunet", "GFLOP/s torch",
           "% sgemm", "verdict")


def _num(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _side(res, side) -> str:
    v = res.get(side)
    if not v:
        return "error" if side in res["errors"] or "setup" in res["errors"] else "-"
    if res["unit"] == "MiB":
        return f"{v['peak']:.1f} MiB"
    return f"{v['median']:.2f} ({v['iqr']:.2f})"


def _target(res) -> str:
    t = res.get("target") or {}
    parts = []
    if "max_ratio" in t:
        parts.append(f"<={t['max_ratio']:g}x")
    if "min_pct_sgemm" in t:
        parts.append(f">={t['min_pct_sgemm']:g}%")
    return " ".join(parts) or "-"


def _verdict(res) -> str:
    if res["meets"] is None:
        return "-"
    return "ok" if res["meets"] else "MISS: " + "; ".join(res["misses"])


def table_rows(results: dict) -> list[tuple]:
    out = []
    for r in results["rows"]:
        g = r.get("gflops") or {}
        pct = (r.get("pct_sgemm") or {}).get("gpunet")
        ratio = _num(r["ratio"]) + ("*" if r.get("noisy") else "")
        out.append((r["name"], r["phase"], _side(r, "gpunet"), _side(r, "torch"), ratio, _target(r),
                    _num(g.get("gpunet"), "{:.1f}"), _num(g.get("torch"), "{:.1f}"), _num(pct, "{:.0f}%"),
                    _verdict(r)))
    return out


def _sgemm_line(results: dict) -> str:
    s = results["sgemm"]
    parts = [f"{k[:-len('_gflops')]} {s[k]:.1f}" for k in ("numpy_gflops", "device_gflops", "torch_gflops") if k in s]
    return f"sgemm {s['n']}x{s['n']} float32 GFLOP/s: " + ", ".join(parts)


def _headline(results: dict) -> list[str]:
    m = results["machine"]
    torch = m.get("torch")
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')} ({b.get('num_threads')} "
                     f"threads)" for b in (m["numpy"].get("blas_loaded") or []))
    engine = f" (CPU engine {results['cpu_engine']})" if results.get("cpu_engine") else ""
    lines = [f"device {results['device']}{engine}; CPU {m['cpu']} ({m['cores']} cores); NumPy {m['numpy']['version']}"
             + (f" [{blas}]" if blas else "")
             + (f"; PyTorch {torch['version']} ({torch['num_threads']} threads, BLAS {torch['blas']})" if torch else
                "; no PyTorch"),
             ]
    if m.get("gpu"):
        g = m["gpu"]
        lines.append(f"GPU {g['name']} (cc {g['compute_capability']}), driver {g['driver']}, CUDA runtime "
                     f"{g['cuda_runtime']}, CuPy {g['cupy']}")
    if m.get("loadavg") is not None:
        lines.append(f"load average (1/5/15 min) at start {m['loadavg']}, at end {results.get('loadavg_at_end')}: "
                     f"other processes on the {m['cores']} cores slow both sides")
    env = m.get("env") or {}
    lines.append("env: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                            "none of OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE or the thread-count variables set"))
    lines.append(f"{'quick, ' if results['quick'] else ''}{results['reps']} timed reps per side after "
                 f"{results['warmup']} warm-up call(s); times are median (IQR) in ms; ratio = gpunet / PyTorch")
    lines.append(_sgemm_line(results))
    return lines + [f"note: {n}" for n in results["notes"]]


def _noisy_note(results: dict) -> list[str]:
    n = sum(1 for r in results["rows"] if r.get("noisy"))
    if not n:
        return []
    return [f"* {n} row(s) noisy: a side's IQR exceeds 25% of its median (a busy machine); results.json also "
            f"has ratio_of_mins, which resists such bursts"]


def format_table(results: dict) -> str:
    """The plain-text report printed by `gpunet bench`."""
    body = table_rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *body)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i in (0, 1, 9) else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = _headline(results) + ["", line(COLUMNS), line(["-" * w for w in widths])] + [line(b) for b in body]
    misses = [r for r in results["rows"] if r["meets"] is False]
    out.append("")
    out += _noisy_note(results)
    out.append(f"{len(misses)} row(s) miss their target" + (": " + ", ".join(f"{r['name']} {r['phase']}"
                                                                             for r in misses) if misses else ""))
    return "\n".join(out)


def format_markdown(results: dict) -> str:
    m = results["machine"]
    git = m.get("git") or {}
    lines = [f"# gpunet vs PyTorch on {results['device']} ({m['cpu']}, {m['date'][:10]})", ""]
    lines += [f"- {h}" for h in _headline(results)]
    if git:
        lines.append(f"- gpunet commit {git.get('commit', '?')[:12]}"
                     + (f" plus uncommitted changes to {', '.join(git['changed'])}" if git.get("dirty") else ""))
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in table_rows(results)]
    misses = [r for r in results["rows"] if r["meets"] is False]
    lines += [""] + _noisy_note(results)
    lines += ["", f"**{len(misses)} row(s) miss their target.**" if misses else "**Every row meets its target.**", ""]
    return "\n".join(lines)


def write_chart(results: dict, path) -> Path | None:
    """A horizontal bar chart of gpunet/PyTorch per row (log scale), targets marked; None without matplotlib
    or without any ratio to draw."""
    rows = [r for r in results["rows"] if r["ratio"] is not None]
    if not rows:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return None
    labels = [f"{r['name']} {r['phase']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    colors = ["#999999" if r["meets"] is None else ("#2e7d32" if r["meets"] else "#c62828") for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(rows) + 1.8))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=colors, height=0.7)
    for yi, r in zip(y, rows):
        t = (r.get("target") or {}).get("max_ratio")
        if t is not None:
            ax.plot([t, t], [yi - 0.4, yi + 0.4], color="black", linewidth=1.5)
        ax.text(r["ratio"], yi, f" {r['ratio']:.2f}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lo = min(min(ratios), 0.5)
    hi = max(max(ratios), 2.0)
    ax.set_xlim(lo / 1.3, hi * 1.6)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("gpunet / PyTorch (time; memory rows: peak bytes) - lower is better; black tick = target")
    m = results["machine"]
    ax.set_title(f"gpunet vs PyTorch on {results['device']}: {m['cpu']}, {m['date'][:10]}"
                 + (" (quick)" if results["quick"] else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def write_outputs(results: dict, out_dir) -> dict:
    """Write results.json, results.md and chart.png (when matplotlib is present) into out_dir; {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(results))
    chart = write_chart(results, out / "chart.png")
    if chart is not None:
        paths["chart"] = chart
    return paths
