"""gpunet.checkpoint: round trips, atomic writes, clear errors for corrupt or mismatched files."""
import json
import zipfile

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.checkpoint import (CheckpointError, load_checkpoint, load_model_state, restore, rng_state,
                               save_checkpoint, set_rng_state)


def small_model(seed=0, hidden=5):
    get_backend("numpy").seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def train_steps(model, opt, sched=None, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    crit = nn.SoftmaxCrossEntropy()
    for _ in range(steps):
        x = model.backend.asarray(rng.standard_normal((8, 4)).astype(np.float32))
        y = model.backend.asarray(rng.integers(0, 3, 8))
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        if sched is not None:
            sched.step()


def make_run(seed=0):
    model = small_model(seed)
    opt = optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    after = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    sched = optim.lr_scheduler.LinearWarmup(opt, 2, after=after)
    return model, opt, sched


def assert_states_equal(a, b, path="state"):
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_states_equal(u, v, f"{path}/{i}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


def test_roundtrip_restores_everything_bitwise(tmp_path):
    model, opt, sched = make_run()
    train_steps(model, opt, sched, steps=3)
    be = get_backend("numpy")
    be.seed(123)
    be.rng.random(3)
    history = [{"epoch": 1, "train_loss": 0.5, "val_loss": None}]
    config = {"dataset": "digits", "lr": 0.01, "epochs": 2}
    extra = {"mean": np.array([0.25], np.float32), "in_shape": [1, 8, 8]}
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, sched, epoch=1, config=config,
                           rng=rng_state(be), history=history, extra=extra)
    expected_next = be.rng.random(4)
    ck = load_checkpoint(path)
    assert ck.epoch == 1 and ck.config == config and ck.history == history
    np.testing.assert_array_equal(ck.extra["mean"], extra["mean"])
    assert_states_equal(ck.optimizer, opt.state_dict())
    assert_states_equal(ck.scheduler, sched.state_dict())
    assert isinstance(ck.optimizer["param_groups"][0]["betas"], tuple)
    assert all(isinstance(k, int) for k in ck.optimizer["state"])

    model2, opt2, sched2 = make_run(seed=9)
    restore(ck, model2, opt2, sched2)
    assert_states_equal(dict(model2.state_dict()), dict(model.state_dict()))
    assert_states_equal(opt2.state_dict(), opt.state_dict())
    assert opt2.lr == opt.lr and sched2.last_epoch == sched.last_epoch
    be.seed(0)
    set_rng_state(ck.rng, be)
    np.testing.assert_array_equal(be.rng.random(4), expected_next)

    train_steps(model, opt, sched, steps=2, seed=5)  # both continue identically
    train_steps(model2, opt2, sched2, steps=2, seed=5)
    assert_states_equal(dict(model2.state_dict()), dict(model.state_dict()))


def test_archive_holds_no_pickles_and_json_meta(tmp_path):
    model, opt, sched = make_run()
    train_steps(model, opt, sched)
    save_checkpoint(tmp_path / "ck.npz", model, opt, sched, epoch=3)
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as z:
        assert "model/0.weight" in z.files and "__meta__" in z.files
        meta = json.loads(z["__meta__"].tobytes())
        assert meta["format"] == "gpunet-checkpoint" and meta["epoch"] == 3
        assert all(z[k].dtype != object for k in z.files)


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    model, opt, _ = make_run()
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, epoch=1)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_truncated_checkpoint_names_file(tmp_path):
    model, opt, _ = make_run()
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, epoch=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ck\.npz.*truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match=r"ck\.npz"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.npz")


def test_corrupted_member_is_detected(tmp_path):
    model, opt, _ = make_run()
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, epoch=1)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/0.weight.npy")
    data[info.header_offset + 30 + len(info.filename) + 140] ^= 0xFF  # flip a byte inside the array data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ck\.npz"):
        load_checkpoint(path)


def test_plain_npz_is_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"other\.npz.*__meta__"):
        load_checkpoint(tmp_path / "other.npz")


def test_shape_mismatch_names_file_key_and_shapes(tmp_path):
    model, opt, _ = make_run()
    path = save_checkpoint(tmp_path / "ck.npz", model, opt)
    other = small_model(hidden=7)
    with pytest.raises(CheckpointError, match=r"ck\.npz.*'0\.weight' has shape \(5, 4\).*expects \(7, 4\)"):
        load_model_state(other, load_checkpoint(path))


def test_key_mismatch_and_optimizer_mismatch(tmp_path):
    model, opt, sched = make_run()
    train_steps(model, opt, sched)
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, sched)
    get_backend("numpy").seed(0)
    deeper = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match=r"ck\.npz.*missing from the checkpoint \['4\.weight', '4\.bias'\]"):
        load_model_state(deeper, load_checkpoint(path))
    m2 = small_model()
    wrong_opt = optim.Adam(list(m2.parameters())[:2], lr=0.01)
    with pytest.raises(CheckpointError, match=r"ck\.npz.*optimizer state does not fit the Adam"):
        restore(load_checkpoint(path), m2, wrong_opt)


def test_written_on_one_device_loads_on_another(tmp_path, device_backend):
    model, opt, sched = make_run()
    train_steps(model, opt, sched)
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, sched, epoch=1)
    model2, _, _ = make_run(seed=4)
    model2.to(device_backend)
    opt2 = optim.Adam(model2.parameters(), lr=0.01)
    restore(load_checkpoint(path), model2, opt2)
    assert model2.backend == device_backend
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    path2 = save_checkpoint(tmp_path / "back.npz", model2, opt2, epoch=1)  # and back to NumPy
    model3 = small_model(seed=8)
    load_model_state(model3, load_checkpoint(path2))
    for (k, a), (_, b) in zip(model.state_dict().items(), model3.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_dropout_streams_are_saved(tmp_path):
    get_backend("numpy").seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model[1].counter = 17
    path = save_checkpoint(tmp_path / "ck.npz", model, rng=rng_state(get_backend("numpy"), model=model))
    get_backend("numpy").seed(1)
    model2 = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    restore(load_checkpoint(path), model2)
    assert (model2[1].seed, model2[1].counter) == (model[1].seed, 17)


def test_atomic_remove_stale_touches_only_dead_writers_of_its_target(tmp_path):
    import subprocess
    import sys

    from gpunet.atomic import atomic_write, remove_stale, temp_path
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_path(tmp_path / "a")                                   # this process: alive
    gone = [tmp_path / f".a.{dead.pid}.0badf00d.tmp", tmp_path / ".a.k3j4h5ab.tmp"]
    other = [tmp_path / f".a.b.{dead.pid}.0badf00d.tmp", tmp_path / f".ab.{dead.pid}.0badf00d.tmp"]
    for p in [mine, *gone, *other]:
        p.write_text("x")
    assert sorted(remove_stale(tmp_path / "a")) == sorted(gone)
    assert mine.exists() and all(p.exists() for p in other)
    with pytest.raises(KeyError), atomic_write(tmp_path / "a") as tmp:
        tmp.write_text("half")
        raise KeyError("interrupted")
    assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [mine, *other])
