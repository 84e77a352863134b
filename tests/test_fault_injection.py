"""SIGKILL `gpunet train` at many points (mid-epoch, inside checkpoint and JSON writes, around the renames):
every kill leaves a loadable checkpoint (or none yet), the next run removes the killed writer's temporary
files, and resuming ends bit for bit where the uninterrupted run does."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet.checkpoint import load_checkpoint
from gpunet.cli.main import main

REPO = Path(__file__).resolve().parents[1]
ARGS = ["train", "--limit-train", "200", "--epochs", "3", "--batch-size", "64", "--device", "cpu", "--quiet"]

# Runs `gpunet` with a SIGKILL at the n-th hit of a point: "step" (an optimizer step), "savez" (half of the
# checkpoint archive written into its temporary file), "replace" (before a rename into place: checkpoint,
# history.json or metrics.json), "replaced" (just after one).
KILLER = r"""
import io, os, signal, sys
import numpy as np
from gpunet.optim.optimizer import Optimizer
point, n = sys.argv[1].split(":")
n, hits = int(n), [0]

def hit():
    hits[0] += 1
    return hits[0] == n

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "step":
    real_step = Optimizer.step
    def step(self):
        if hit():
            die()
        real_step(self)
    Optimizer.step = step
elif point == "savez":
    real_savez = np.savez
    def savez(f, **arrays):
        if hit():
            buf = io.BytesIO()
            real_savez(buf, **arrays)
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            f.flush()
            die()
        return real_savez(f, **arrays)
    np.savez = savez
else:
    real_replace = os.replace
    def replace(a, b):
        if point == "replace" and hit():
            die()
        real_replace(a, b)
        if point == "replaced" and hit():
            die()
    os.replace = replace
from gpunet.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def killed_run(out: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, point, *ARGS, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{point}: the kill point was never reached\n{proc.stderr}"


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return load_checkpoint(out / "checkpoint.npz"), json.loads((out / "history.json").read_text())


def check_kill_and_recovery(tmp_path, straight, point):
    out = tmp_path / point.replace(":", "-")
    killed_run(out, point)
    ck = out / "checkpoint.npz"
    if ck.exists():
        done = load_checkpoint(ck).epoch  # loadable, whatever the kill interrupted
        assert 1 <= done <= 3
        assert main(["train", "--resume", str(ck), "--quiet"]) == 0
    else:  # killed before the first checkpoint: the folder holds no run, a new one may start there
        assert main([*ARGS, "--out", str(out)]) == 0
    assert temporaries(out) == [], point
    ref, ref_history = straight
    got = load_checkpoint(ck)
    assert got.epoch == 3
    for k in ref.model:
        np.testing.assert_array_equal(ref.model[k], got.model[k], err_msg=f"{point}: {k}")
    for a, b in zip(ref.optimizer["state"].values(), got.optimizer["state"].values()):
        np.testing.assert_array_equal(a["exp_avg"], b["exp_avg"], err_msg=point)
    history = json.loads((out / "history.json").read_text())
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history], point
    assert (ck.stat().st_mode & 0o777) == ((out / "history.json").stat().st_mode & 0o777)


# a kill mid-epoch 2, one inside the second checkpoint write, one between a checkpoint and the JSON files
@pytest.mark.parametrize("point", ["step:5", "savez:2", "replaced:3"])
def test_killed_training_resumes_bitwise(tmp_path, straight, point):
    check_kill_and_recovery(tmp_path, straight, point)


# 3 epochs of 3 steps; 3 checkpoint writes; 5 renames (3 checkpoints, history.json, metrics.json)
@pytest.mark.slow
@pytest.mark.parametrize("point", [f"step:{i}" for i in range(1, 10)] + [f"savez:{i}" for i in (1, 3)]
                         + [f"replace:{i}" for i in range(1, 6)] + [f"replaced:{i}" for i in (1, 2, 4, 5)])
def test_killed_training_resumes_bitwise_at_every_point(tmp_path, straight, point):
    check_kill_and_recovery(tmp_path, straight, point)


def test_sigterm_during_training_exits_143_keeping_the_checkpoint(tmp_path):
    """SIGTERM is Ctrl-C's twin: one line, exit 143, the last checkpoint loadable, no temporaries; a resume
    then ends where the uninterrupted run does (checked above), so only the state left behind is checked."""
    out = tmp_path / "run"
    epochs_50 = [*ARGS[:4], "50", *ARGS[5:]]  # ARGS with --epochs 50
    proc = subprocess.Popen([sys.executable, "-m", "gpunet.cli.main", *epochs_50, "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first epoch is done and checkpointed
            if line.startswith("epoch 1/50"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "gpunet train: terminated (SIGTERM)"
    assert 1 <= load_checkpoint(out / "checkpoint.npz").epoch < 50 and temporaries(out) == []
