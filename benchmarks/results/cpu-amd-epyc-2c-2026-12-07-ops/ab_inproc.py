"""In one process, the before (cbf4e49) and after (branch ops) NumpyOps on every `gpunet bench --device cpu`
timed row, alternated block by block by gpunet.bench.timing.measure (the two trees imported under
the names gpunet_before and gpunet_after); gpunet's own setups, PyTorch left out. Prints per row the
median of each side and after/before."""
import statistics, sys
import numpy as np
import gpunet_before.backend as bb, gpunet_after.backend as ab
import gpunet_before.bench.workloads as bw, gpunet_after.bench.workloads as aw
from gpunet_after.bench.timing import measure

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
brows, arows = bw.full_rows(), aw.full_rows()
bbe, abe = bb.get_backend("cpu"), ab.get_backend("cpu")
ratios = []
print(f"| row | before ms | after ms | after/before | IQR before / after (ms) |")
print("|---|---|---|---|---|")
for br, ar in zip(brows, arows):
    if br.unit != "ms":
        continue
    assert br.id == ar.id
    g_b, _ = br.setup(bw.Env(bbe, None, "cpu", np.random.default_rng(0), 0.2))
    g_a, _ = ar.setup(aw.Env(abe, None, "cpu", np.random.default_rng(0), 0.2))
    out_b, out_a = g_b(), g_a()
    flat = lambda o: [np.asarray(v) for v in (o if isinstance(o, (tuple, list)) else (o,)) if v is not None and np.ndim(v)]
    same = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(flat(out_b), flat(out_a)))
    st = measure({"before": g_b, "after": g_a}, reps=reps, warmup=1, rounds=4, settle=0.2)
    b, a = st["before"].median * 1e3, st["after"].median * 1e3
    ratios.append(a / b)
    print(f"| {br.name} {br.phase} | {b:.2f} | {a:.2f} | {a / b:.2f} | {st['before'].iqr * 1e3:.2f} / {st['after'].iqr * 1e3:.2f} |"
          + ("" if same else " (outputs differ!)"), flush=True)
print(f"\nmedian over {len(ratios)} rows of after/before: {statistics.median(ratios):.3f} (rows {min(ratios):.2f}-{max(ratios):.2f})")
