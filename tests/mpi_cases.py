"""Programs the MPI tests (tests/test_distributed.py) run under `mpiexec -n K` (or alone, as K = 1):
`python tests/mpi_cases.py CASE OUT_DIR`. Each rank writes what it saw to OUT_DIR/rank<r>.npz (or .json);
the test compares. Failure cases end through `comm.abort_on_error`, as `gpunet train --distributed` does."""
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from gpunet import distributed, get_backend, optim
from gpunet.data import DataLoader, load_digits
from gpunet.models import build_model
from gpunet.nn import SoftmaxCrossEntropy
from gpunet.training import Trainer

STEPS, BATCH = 20, 32


class RecordingLoss(SoftmaxCrossEntropy):
    """The loss the Trainer uses, recording (loss * rows) of every step on this rank."""

    def __init__(self):
        super().__init__()
        self.sums = []

    def __call__(self, logits, labels):
        loss = super().__call__(logits, labels)
        self.sums.append(float(loss.data) * len(labels))
        return loss


def primitives(comm, out: Path):
    r, k = comm.rank, comm.size
    a32 = np.arange(6, dtype=np.float32).reshape(2, 3) * (r + 1)
    a64 = np.full(4, 10.0 * r, dtype=np.float64)
    mean32, mean64 = comm.allreduce_mean([a32, a64])
    s = comm.allreduce_sum([np.array([r + 1], np.int64)])[0]
    b = comm.broadcast([np.full(3, float(r), np.float32)], root=k - 1)[0]
    comm.barrier()
    names = comm.allgather(f"rank{r}")
    np.savez(out / f"rank{r}.npz", mean32=mean32, mean64=mean64, sum=s, bcast=b, a32=a32,
             names=np.array(names))


def _digits_run(comm, out: Path, model_name: str, sync_bn: bool = False):
    """20 steps of one epoch over 640 digits at global batch 32, sharded over the ranks."""
    data = load_digits()
    be = get_backend("cpu")
    x, y = data.x_train[:STEPS * BATCH], data.y_train[:STEPS * BATCH]
    shard = (comm.rank, comm.size) if comm.size > 1 else None
    loader = DataLoader(x, y, BATCH, shuffle=True, seed=3, backend=be, shard=shard)
    seed = 0 if comm.rank == 0 else 100 + comm.rank  # other ranks start elsewhere: the broadcast must fix it
    model = build_model(model_name, data.in_shape, data.num_classes, seed=seed, backend=be)
    if sync_bn:
        model = distributed.convert_sync_batchnorm(model, comm)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = RecordingLoss()
    trainer = Trainer(model, opt, loss, progress="none", comm=comm, sync_every=5)
    trainer.fit(loader, epochs=1)
    sums = np.array(loss.sums, dtype=np.float64)
    if comm.size > 1:  # the global batch's mean loss per step
        sums = comm.allreduce_sum([sums])[0]
    state = {f"p/{n}": np.asarray(v) for n, v in model.state_dict().items()}
    np.savez(out / f"rank{comm.rank}.npz", losses=sums / BATCH, **state)


def mlp(comm, out):
    _digits_run(comm, out, "mlp")


def cnn(comm, out):
    _digits_run(comm, out, "cnn")


def cnn_syncbn(comm, out):
    _digits_run(comm, out, "cnn", sync_bn=True)


def mlp_standin_nccl(comm, out):
    """The mlp case on the CuPy stand-in (tests/cupy_standin) with its checking NCCL: device buffers are
    reduced by `allReduce` calls, the data moved between the ranks on the host by mpi4py (test only).
    With a 4th argument "unavailable", the stand-in says NCCL is unavailable: MPI with host staging."""
    import warnings

    sys.path.insert(0, str(Path(__file__).parent))
    import cupy_standin
    from cupy_standin import _nccl
    cupy_standin.install()
    available = sys.argv[4:5] != ["unavailable"]

    def exchange(kind, array, root):
        if kind == "allreduce":
            return comm.mpi_comm.allreduce(array)
        return comm.mpi_comm.bcast(array, root=root)

    cupy_standin.install_nccl(exchange, available=available)
    from gpunet.distributed.nccl import for_device
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dcomm, how = for_device(comm)
    data = load_digits()
    be = get_backend("cupy")
    x, y = data.x_train[:STEPS * BATCH], data.y_train[:STEPS * BATCH]
    loader = DataLoader(x, y, BATCH, shuffle=True, seed=3, backend=be, shard=(comm.rank, comm.size))
    model = build_model("mlp", data.in_shape, data.num_classes, seed=comm.rank, backend=be)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = RecordingLoss()
    cupy_standin.reset_counts()
    Trainer(model, opt, loss, progress="none", comm=dcomm, sync_every=5).fit(loader, epochs=1)
    reads = cupy_standin.syncs()
    sums = comm.allreduce_sum([np.array(loss.sums, dtype=np.float64)])[0]
    state = {f"p/{n}": np.asarray(v) for n, v in model.state_dict().items()}
    calls = [c for c in _nccl.CALLS if c[0] == "allReduce"]
    (out / f"rank{comm.rank}.json").write_text(json.dumps({
        "how": how, "nccl": type(dcomm).__name__, "warnings": [str(w.message) for w in caught],
        "allreduce_calls": calls, "bcast_calls": [c for c in _nccl.CALLS if c[0] == "bcast"],
        "init": [c for c in _nccl.CALLS if c[0] == "init"], "reads": reads}))
    np.savez(out / f"rank{comm.rank}.npz", losses=sums / BATCH, **state)


def _with_abort(fn):
    @functools.wraps(fn)
    def run(comm, out):
        with comm.abort_on_error("mpi_cases"):
            fn(comm, out)
    return run


@_with_abort
def rank_raises(comm, out):
    class Failing(SoftmaxCrossEntropy):
        step = 0

        def __call__(self, logits, labels):
            self.step += 1
            if comm.rank == 1 and self.step == 4:
                raise ValueError("bad batch on purpose (step 4)")
            return super().__call__(logits, labels)

    data, be = load_digits(), get_backend("cpu")
    loader = DataLoader(data.x_train, data.y_train, 32, seed=0, backend=be, shard=(comm.rank, comm.size))
    model = build_model("mlp", data.in_shape, data.num_classes, seed=0, backend=be)
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), Failing(), progress="none", comm=comm).fit(loader, epochs=1)


@_with_abort
def nan_on_one_rank(comm, out):
    """Row 80 is NaN: with batches of 32 in order it is in rank 1's half of step 3 (rows 80-95)."""
    data, be = load_digits(), get_backend("cpu")
    x = data.x_train.copy()
    x[80] = np.nan
    loader = DataLoader(x, data.y_train, 32, shuffle=False, backend=be, shard=(comm.rank, comm.size))
    model = build_model("mlp", data.in_shape, data.num_classes, seed=0, backend=be)
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress="none", comm=comm, sync_every=5).fit(loader, 1)


@_with_abort
def mismatched_models(comm, out):
    data, be = load_digits(), get_backend("cpu")
    loader = DataLoader(data.x_train, data.y_train, 32, seed=0, backend=be, shard=(comm.rank, comm.size))
    model = build_model("mlp" if comm.rank == 0 else "cnn", data.in_shape, data.num_classes, seed=0, backend=be)
    Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress="none", comm=comm).fit(loader, epochs=1)


@_with_abort
def rank_stuck(comm, out):
    if comm.rank == 1:
        time.sleep(600)  # never joins: the others' timeout must end the job
    comm.allreduce_mean([np.ones(3, np.float32)])


def nccl_check_script(comm, out):
    """scripts/nccl_check.py (the real-GPU NCCL check gpu_check.sh runs) on the stand-in and its checking NCCL,
    so the script cannot rot between GPU sessions."""
    sys.path.insert(0, str(Path(__file__).parent))
    import cupy_standin
    cupy_standin.install()
    cupy_standin.install_nccl(lambda kind, array, root: comm.mpi_comm.allreduce(array) if kind == "allreduce"
                              else comm.mpi_comm.bcast(array, root=root))
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    import nccl_check
    if nccl_check.main() != 0:
        raise SystemExit(1)


CASES = {f.__name__: f for f in (primitives, mlp, cnn, cnn_syncbn, mlp_standin_nccl, rank_raises, nan_on_one_rank,
                                 mismatched_models, rank_stuck, nccl_check_script)}

if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else 120.0
    comm = distributed.init(timeout=timeout)
    CASES[case](comm, out)
    (out / f"done{comm.rank}.json").write_text(json.dumps({"rank": comm.rank, "size": comm.size}))
