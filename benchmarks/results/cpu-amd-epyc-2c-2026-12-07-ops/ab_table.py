"""Before/after table from alternated `gpunet bench` runs (dirs before<i>, after<i>): per row, the median
over runs of gpunet's median time and of the gpunet/PyTorch ratio, before and after, and after/before.
Usage: ab_table.py DIR [first_run last_run]"""
import json, statistics, sys
from pathlib import Path
base = Path(sys.argv[1])
lo, hi = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1, 99)
def runs(side):
    out = []
    for d in sorted((p for p in base.glob(f"{side}*") if p.is_dir()), key=lambda p: int(p.name[len(side):])):
        if d.is_dir() and lo <= int(d.name[len(side):]) <= hi and (d / "results.json").is_file():
            out.append(json.loads((d / "results.json").read_text()))
    return out
data = {s: runs(s) for s in ("before", "after")}
ids = [r["id"] for r in data["before"][0]["rows"] if r.get("gpunet") and r.get("unit") == "ms"]
def rows(side, rid):
    return [r for run in data[side] for r in run["rows"] if r["id"] == rid and r.get("gpunet")]
print(f"runs {lo}-{min(hi, len(data['before']) + lo - 1)}: before {len(data['before'])}, after {len(data['after'])}\n")
print("| row | gpunet ms before | after | after/before | ratio to PyTorch before | after | after/before | ratio range before / after |")
print("|---|---|---|---|---|---|---|---|")
qs, ms = [], []
for rid in ids:
    b, a = rows("before", rid), rows("after", rid)
    bm = statistics.median(r["gpunet"]["median"] for r in b); am = statistics.median(r["gpunet"]["median"] for r in a)
    br = [r["ratio"] for r in b if r.get("ratio")]; ar = [r["ratio"] for r in a if r.get("ratio")]
    brm, arm = statistics.median(br), statistics.median(ar)
    name = b[0]["name"] + (" " + b[0]["phase"] if b[0].get("phase") else "")
    qs.append(arm / brm); ms.append(am / bm)
    print(f"| {name} | {bm:.2f} | {am:.2f} | {am / bm:.2f} | {brm:.2f} | {arm:.2f} | {arm / brm:.2f} | "
          f"{min(br):.2f}-{max(br):.2f} / {min(ar):.2f}-{max(ar):.2f} |")
print(f"\nMedian over the {len(qs)} rows of after/before: {statistics.median(qs):.2f} in the ratio to PyTorch "
      f"(rows {min(qs):.2f}-{max(qs):.2f}), {statistics.median(ms):.2f} in gpunet's own time (rows {min(ms):.2f}-{max(ms):.2f}).")
