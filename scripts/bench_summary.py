"""Summarise several `gpunet bench` runs of the same commit: per row, the ratio of each run and their
median, so one busy minute on a shared machine does not decide a row.

    python scripts/bench_summary.py RUN_DIR [RUN_DIR ...] [--markdown]

Each RUN_DIR holds a results.json written by `gpunet bench`. Rows are matched by id; a row missing
from a run is shown as "-". Memory rows are left out (they do not vary between runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def load(run: Path) -> dict:
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"bench_summary: no results.json in {run}")
    return json.loads(path.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    runs = [load(r) for r in args.runs]
    commits = {(r.get("machine", {}).get("git") or {}).get("commit") for r in runs}
    if len(commits) > 1:
        print(f"bench_summary: warning: the runs are of different commits: {sorted(map(str, commits))}",
              file=sys.stderr)
    order, table = [], {}
    for k, run in enumerate(runs):
        for row in run["rows"]:
            if row.get("unit") != "ms":
                continue
            if row["id"] not in table:
                order.append(row["id"])
                table[row["id"]] = {"name": f"{row['name']} {row['phase']}", "target": row.get("target"),
                                    "ratios": [None] * len(runs)}
            table[row["id"]]["ratios"][k] = row.get("ratio")
    head = ["row"] + [f"run {k + 1}" for k in range(len(runs))] + ["median", "target"]
    lines = []
    for rid in order:
        t = table[rid]
        got = [r for r in t["ratios"] if r is not None]
        med = statistics.median(got) if got else None
        target = t["target"] or {}
        want = f"<={target['max_ratio']}x" if target.get("max_ratio") else "-"
        cells = [t["name"]] + [f"{r:.2f}" if r is not None else "-" for r in t["ratios"]]
        cells += [f"{med:.2f}" if med is not None else "-", want]
        lines.append(cells)
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
        for cells in [head] + lines:
            print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
