"""Data-parallel training (gpunet.distributed): sharding and buckets in process, then real MPI jobs of 2 ranks
under `mpiexec` (tests/mpi_cases.py and `gpunet train --distributed`), each bounded by a subprocess timeout.

The MPI tests skip only when mpi4py or mpiexec is missing; with GPUNET_REQUIRE_MPI=1 (CI) that is a failure.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpunet.data import DataLoader
from gpunet.distributed.gradients import GradientReducer

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "mpi_cases.py"
JOB_TIMEOUT = 300  # seconds for one mpiexec job on a loaded 2-core machine; the fault tests demand far less


# --- sharding (no MPI) ---------------------------------------------------------------------------------

def _batches(loader):
    return [yb for _, yb in loader]


@pytest.mark.parametrize("k", [2, 3])
def test_shards_are_disjoint_slices_of_the_single_process_batches(k):
    X = np.arange(53, dtype=np.float32)[:, None]  # batches of 12, the last of 5
    y = np.arange(53)
    single = DataLoader(X, y, 12, shuffle=True, seed=5)
    shards = [DataLoader(X, y, 12, shuffle=True, seed=5, shard=(r, k)) for r in range(k)]
    for epoch in range(2):  # reshuffled every epoch, identically on every rank
        full = _batches(single)
        parts = [_batches(s) for s in shards]
        assert all(len(p) == len(full) for p in parts)
        for i, batch in enumerate(full):
            np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), batch)
        assert len(np.unique(np.concatenate([np.concatenate(p) for p in parts]))) == 53
    assert not np.array_equal(_batches(single)[0], full[0])  # epoch 3 differs from epoch 2


def test_shard_skips_an_empty_slice_and_reports_its_rows():
    X, y = np.zeros((9, 1), np.float32), np.arange(9)
    last = [DataLoader(X, y, 4, shuffle=False, shard=(r, 3)) for r in range(3)]
    # batches of 4, 4, 1: rank 0 gets rows [0, 1) of each, rank 1 [1, 2), rank 2 [2, 4); of the last (1 row)
    # only rank 2 gets one
    assert [len(dl) for dl in last] == [2, 2, 3]
    dl = last[2]
    for _ in dl:
        pass
    assert dl.last_part == (0, 1, 1)


@pytest.mark.parametrize("bad", [(2, 2), (-1, 2), (0, 0), "ab", (0.5, 2), (True, 2)])
def test_shard_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="shard must be"):
        DataLoader(np.zeros((4, 1)), np.zeros(4, np.int64), 2, shard=bad)


# --- buckets (a communicator of one rank that records what it reduced) ---------------------------------

class _Recorder:
    size, rank = 1, 0

    def __init__(self):
        self.calls = []

    def allreduce_inplace(self, buf, what):
        self.calls.append(buf.copy())


def test_buckets_are_few_ordered_and_skip_frozen_parameters():
    from gpunet.models import build_model
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    params = list(model.parameters())
    params[0].requires_grad = False
    rec = _Recorder()
    red = GradientReducer(params, rec, bucket_bytes=40_000)
    flat = [p for b in red.buckets for p in b]
    assert flat == params[1:]  # the model's order, the frozen weight left out
    assert 1 < len(red) < len(flat)
    for p in params:
        p.grad = np.full(p.shape, 3.0, np.float32)
    red.reduce(n_local=4, xp=np)
    assert len(rec.calls) == len(red)  # one allreduce per bucket
    assert all(c[-1] == 4 for c in rec.calls)  # the sample count rides in the last slot
    for p in flat:
        np.testing.assert_array_equal(p.grad, 3.0)  # (4 * g) / 4
    np.testing.assert_array_equal(params[0].grad, 3.0)  # untouched


class _OneRank:
    """A communicator of one rank that says it has two (so layers take their distributed path) and
    reduces nothing: sync-BN must then compute plain batch norm."""
    size, rank = 2, 0

    def allreduce_inplace(self, buf, what):
        pass


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (7, 4)])
def test_sync_batchnorm_on_one_rank_is_batch_norm(shape):
    import gpunet
    from gpunet import distributed, nn
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float64) * 3 + 1
    dy = rng.standard_normal(shape)
    layers = []
    for comm in (None, _OneRank()):
        bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1], dtype=np.float64)
        bn.weight.data[...] = rng.uniform(0.5, 2, shape[1]) if not layers else layers[0][0].weight.data
        distributed.convert_sync_batchnorm(bn, comm)
        xt = gpunet.tensor(x, requires_grad=True)
        y = bn(xt)
        y.backward(dy)
        layers.append((bn, y.data, xt.grad))
    (ref, y0, dx0), (sync, y1, dx1) = layers
    np.testing.assert_allclose(y1, y0, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-9, atol=1e-10)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(sync, name).grad, getattr(ref, name).grad, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(sync, name), getattr(ref, name), rtol=1e-12)


def test_distributed_only_options_are_refused_without_distributed(capsys):
    from gpunet.cli.main import main
    assert main(["train", "--sync-bn", "--epochs", "1"]) == 1
    assert "--sync-bn applies to --distributed runs only" in capsys.readouterr().err


# --- MPI jobs ------------------------------------------------------------------------------------------

def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        return None, f"mpi4py is not installed ({e}); pip install -e '.[distributed]'"
    exe = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        return None, "no mpiexec on PATH or beside the Python executable"
    return exe, None


@pytest.fixture(scope="module")
def mpiexec():
    exe, why = _mpiexec()
    if exe is None:
        if os.environ.get("GPUNET_REQUIRE_MPI"):
            pytest.fail(f"GPUNET_REQUIRE_MPI is set but the MPI tests cannot run: {why}")
        pytest.skip(why)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    return [exe, *extra]


def _env(**extra):
    env = dict(os.environ, **extra, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("GPUNET_DEBUG", None)
    return env


def _job(mpiexec, n, argv, timeout=JOB_TIMEOUT, cwd=None, env=None):
    """Run argv (after `python`) on n ranks, or plainly when n is None; env: extra variables. Returns
    (CompletedProcess, seconds)."""
    cmd = ([*mpiexec, "-n", str(n)] if n else []) + [sys.executable, *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**(env or {})), cwd=cwd)
    return proc, time.perf_counter() - t0


def _case(mpiexec, n, case, out: Path, *extra, timeout=JOB_TIMEOUT, env=None):
    out.mkdir(parents=True, exist_ok=True)
    proc, seconds = _job(mpiexec, n, [str(CASES), case, str(out), *extra], timeout=timeout, env=env)
    return proc, seconds


def _ok(proc):
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_collectives_on_two_ranks(mpiexec, tmp_path):
    proc, _ = _case(mpiexec, 2, "primitives", tmp_path)
    _ok(proc)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in range(2))
    np.testing.assert_array_equal(r0["mean32"], (r0["a32"] + r1["a32"]) / 2)
    assert r0["mean32"].dtype == np.float32
    np.testing.assert_array_equal(r0["mean64"], np.full(4, 5.0))
    for r in (r0, r1):
        assert int(r["sum"][0]) == 3
        np.testing.assert_array_equal(r["bcast"], np.full(3, 1.0, np.float32))  # root 1's values
        assert list(r["names"]) == ["rank0", "rank1"]
    np.testing.assert_array_equal(r0["mean32"], r1["mean32"])


# Tolerances of the equivalence tests. With 2 ranks a gradient is (16 g_0 + 16 g_1) / 32 summed in float32,
# where one process computes the mean over 32 rows in one reduction: the two differ by float32 rounding
# (a few ulp), not bitwise, and 20 SGD-momentum steps carry that along. Measured (mlp): losses agree to 2e-7
# relative, weights to 1.2e-7 absolute (|w| <= 0.8: 1-2 ulp); cnn with sync-BN: losses 5e-7, every state
# entry (weights, running statistics) within 9e-7 of its largest magnitude. The bounds leave ~10x room; a real
# error (a different dropout mask, a missed rank, a wrong weighting, local BN statistics) moves losses by 1e-3
# or more.
LOSS_RTOL, STATE_RTOL = 5e-6, 1e-5


def _compare_runs(single: Path, multi: Path, k: int):
    """Rank 0's losses and state after 20 steps against one process's; every rank's state identical."""
    a = np.load(single / "rank0.npz")
    ranks = [np.load(multi / f"rank{r}.npz") for r in range(k)]
    assert len(a["losses"]) == 20
    np.testing.assert_allclose(ranks[0]["losses"], a["losses"], rtol=LOSS_RTOL)
    state = [f for f in a.files if f.startswith("p/")]
    assert state
    for f in state:
        scale = max(1.0, float(np.abs(a[f]).max()))
        np.testing.assert_allclose(ranks[0][f], a[f], rtol=0, atol=STATE_RTOL * scale, err_msg=f)
        for r in ranks[1:]:  # every rank holds the same weights and statistics, bit for bit
            np.testing.assert_array_equal(r[f], ranks[0][f], err_msg=f)
    return a, ranks


def test_mlp_two_ranks_match_one_process_step_by_step(mpiexec, tmp_path):
    proc, _ = _case(mpiexec, None, "mlp", tmp_path / "k1")
    _ok(proc)
    proc, _ = _case(mpiexec, 2, "mlp", tmp_path / "k2")
    _ok(proc)
    _compare_runs(tmp_path / "k1", tmp_path / "k2", 2)


# Sync-BN sums each rank's NumPy batch-norm sums; one process on the oneDNN engine would run oneDNN's own batch
# norm (another summation order: the 20 steps' losses drifted 1.2e-5 apart, measured). Both sides run the NumPy
# engine, so the comparison sees the distribution and nothing else.
NUMPY_ENGINE = {"GPUNET_CPU_ENGINE": "numpy"}


def test_cnn_with_sync_bn_matches_one_process_and_without_it_does_not(mpiexec, tmp_path):
    _ok(_case(mpiexec, None, "cnn", tmp_path / "k1", env=NUMPY_ENGINE)[0])
    _ok(_case(mpiexec, 2, "cnn_syncbn", tmp_path / "sync", env=NUMPY_ENGINE)[0])
    single, _ = _compare_runs(tmp_path / "k1", tmp_path / "sync", 2)
    # without sync-BN each rank normalises its 16 images with their own statistics: another computation.
    # Measured: the first step's loss agrees (the same weights, batch norm's output barely depends on the
    # batch size at init), later steps differ by up to ~20%; training still works, and the ranks end with
    # the same weights and (averaged) running statistics.
    _ok(_case(mpiexec, 2, "cnn", tmp_path / "local", env=NUMPY_ENGINE)[0])
    local = [np.load(tmp_path / "local" / f"rank{r}.npz") for r in range(2)]
    rel = np.abs(local[0]["losses"] - single["losses"]) / single["losses"]
    assert rel.max() > 1e-3, rel
    assert local[0]["losses"][-5:].mean() < 0.5 * local[0]["losses"][:5].mean()
    for f in (f for f in single.files if f.startswith("p/")):
        np.testing.assert_array_equal(local[0][f], local[1][f], err_msg=f)


def _train_cli(mpiexec, n, out: Path, *options):
    argv = ["-m", "gpunet.cli.main", "train", "--device", "cpu", "--quiet", "--out", str(out), *options]
    if n:
        argv.append("--distributed")
    return _job(mpiexec, n, argv)


def test_cli_two_ranks_complete_and_match_the_single_process_accuracy(mpiexec, tmp_path):
    opts = ("--epochs", "2", "--limit-train", "400")
    proc, _ = _train_cli(mpiexec, 2, tmp_path / "k2", *opts)
    _ok(proc)
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("epoch 2/2") == 1  # rank 0 alone
    files = {p.name for p in (tmp_path / "k2").iterdir()}
    assert {"checkpoint.npz", "history.json", "metrics.json", "curves.png"} <= files
    m2 = json.loads((tmp_path / "k2" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["test_samples"] == 359
    cm = np.array(m2["test_confusion_matrix"])  # reduced over the ranks' shards: the whole test split's
    assert cm.sum() == 359 and np.trace(cm) / 359 == m2["test_accuracy"] and "confusion.png" in files
    proc, _ = _train_cli(mpiexec, None, tmp_path / "k1", *opts)
    _ok(proc)
    m1 = json.loads((tmp_path / "k1" / "metrics.json").read_text())
    assert m1["world_size"] == 1
    # the cnn has batch norm: 2 ranks normalise over 16 images each, one process over 32 (not the same run)
    assert abs(m2["test_accuracy"] - m1["test_accuracy"]) <= 0.01, (m1["test_accuracy"], m2["test_accuracy"])


def test_cli_sync_bn_on_two_ranks(mpiexec, tmp_path):
    proc, _ = _train_cli(mpiexec, 2, tmp_path / "run", "--sync-bn", "--epochs", "1", "--limit-train", "200")
    _ok(proc)
    assert "synchronised batch norm" in proc.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["sync_bn"] is True and m["world_size"] == 2 and m["test_accuracy"] > 0.5


def test_cli_resume_under_two_ranks_and_under_one(mpiexec, tmp_path):
    opts = ("--model", "mlp", "--limit-train", "300", "--schedule", "none")
    _ok(_train_cli(mpiexec, 2, tmp_path / "straight", *opts, "--epochs", "2")[0])
    _ok(_train_cli(mpiexec, 2, tmp_path / "split", *opts, "--epochs", "1")[0])
    proc, _ = _job(mpiexec, 2, ["-m", "gpunet.cli.main", "train", "--device", "cpu", "--quiet", "--distributed",
                                "--resume", str(tmp_path / "split" / "checkpoint.npz"), "--epochs", "2"])
    _ok(proc)
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert split["test_loss"] == straight["test_loss"]  # the same K: bit for bit
    # a checkpoint of 2 ranks resumes in one process (host arrays, the global batch's state)
    shutil.copytree(tmp_path / "straight", tmp_path / "one")
    proc, _ = _job(mpiexec, None, ["-m", "gpunet.cli.main", "train", "--device", "cpu", "--quiet",
                                   "--resume", str(tmp_path / "one" / "checkpoint.npz"), "--epochs", "3"])
    _ok(proc)
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["epochs"] == 3


# --- failures end every rank, promptly, with the message ------------------------------------------------

FAULT_SECONDS = 60  # generous for 2 ranks starting on a loaded machine; a hang would run into the timeout


def _fails(proc, seconds, *needles):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert seconds < FAULT_SECONDS, f"took {seconds:.0f}s"
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_a_rank_raising_mid_epoch_ends_every_rank(mpiexec, tmp_path):
    proc, seconds = _case(mpiexec, 2, "rank_raises", tmp_path, timeout=FAULT_SECONDS + 60)
    _fails(proc, seconds, "error on rank 1 of 2", "bad batch on purpose (step 4)")
    assert not list(tmp_path.glob("done*.json"))


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(mpiexec, tmp_path):
    proc, seconds = _case(mpiexec, 2, "nan_on_one_rank", tmp_path, timeout=FAULT_SECONDS + 60)
    _fails(proc, seconds, "training diverged: the loss became nan at epoch 1, step 3")
    assert not list(tmp_path.glob("done*.json"))


def test_mismatched_models_are_an_error_on_every_rank(mpiexec, tmp_path):
    proc, seconds = _case(mpiexec, 2, "mismatched_models", tmp_path, timeout=FAULT_SECONDS + 60)
    _fails(proc, seconds, "the ranks built different models", "rank 0 has param 1.weight (256, 64)")


def test_a_stuck_rank_times_out_instead_of_hanging(mpiexec, tmp_path):
    proc, seconds = _case(mpiexec, 2, "rank_stuck", tmp_path, "3", timeout=FAULT_SECONDS + 60)
    _fails(proc, seconds, "error on rank 0 of 2", "timed out after 3s")


def test_a_batch_not_divisible_by_the_ranks_is_refused(mpiexec, tmp_path):
    proc, seconds = _train_cli(mpiexec, 2, tmp_path / "run", "--batch-size", "31", "--epochs", "1")
    _fails(proc, seconds, "--batch-size 31 is not divisible by the 2 ranks")
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


# --- NCCL wiring on the CuPy stand-in (tests/cupy_standin/_nccl.py checks every call) -------------------

def test_nccl_path_on_the_cupy_standin(mpiexec, tmp_path):
    """2 ranks on the stand-in with its checking NCCL: one in-place float32 allReduce per bucket and step, the
    weights broadcast by NCCL, the same losses as one NumPy process, and no device read added by the
    distributed path (the same count as one stand-in process). Then NCCL unavailable: a warning, MPI with
    host staging, the same results."""
    if shutil.which("g++") is None:
        pytest.skip("the CuPy stand-in runs kernels on the CUDA emulator, which needs g++")
    _ok(_case(mpiexec, None, "mlp", tmp_path / "numpy")[0])
    _ok(_case(mpiexec, None, "mlp_standin_nccl", tmp_path / "one")[0])
    _ok(_case(mpiexec, 2, "mlp_standin_nccl", tmp_path / "nccl")[0])
    _ok(_case(mpiexec, 2, "mlp_standin_nccl", tmp_path / "staged", "-", "unavailable")[0])
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    for r in range(2):
        info = json.loads((tmp_path / "nccl" / f"rank{r}.json").read_text())
        assert info["nccl"] == "NcclCommunicator" and info["how"].endswith("NCCL") and not info["warnings"]
        assert info["init"] == [["init", 2, r]]
        calls = info["allreduce_calls"]
        assert len(calls) == 20 and all(c[1:] == [calls[0][1], 7, 0, True] for c in calls)  # float32, sum, in place
        assert len(info["bcast_calls"]) == 6  # the mlp's 3 weights and 3 biases
        assert info["reads"] == one["reads"], (info["reads"], one["reads"])
        staged = json.loads((tmp_path / "staged" / f"rank{r}.json").read_text())
        assert staged["nccl"] == "Communicator" and not staged["allreduce_calls"]
        assert any("NCCL is unavailable" in w and "host staging" in w for w in staged["warnings"])
    _compare_runs(tmp_path / "numpy", tmp_path / "nccl", 2)
    _compare_runs(tmp_path / "numpy", tmp_path / "staged", 2)


def test_the_gpu_nccl_check_script_runs_on_the_standin(mpiexec, tmp_path):
    """scripts/nccl_check.py is what a GPU session runs (gpu_check.sh); here it runs on the checking stand-in."""
    proc, _ = _case(mpiexec, 2, "nccl_check_script", tmp_path)
    _ok(proc)
    assert "nccl_check: PASS" in proc.stdout and "2 rank(s)" in proc.stdout and "FAIL" not in proc.stdout
