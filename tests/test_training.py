"""gpunet.training: the Trainer loop, runs from a config, determinism, bitwise resume, divergence."""
import io
import json

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.checkpoint import load_checkpoint
from gpunet.data import DataLoader
from gpunet.training import Progress, TrainConfig, Trainer, TrainingError, evaluate, run
from gpunet.training.trainer import Trainer as _Trainer
from helpers import assert_same_weights, weights

QUICK = dict(dataset="digits", device="cpu", limit_train=300, epochs=2, batch_size=32)


def quick(**over):
    return TrainConfig(**{**QUICK, **over})


def test_run_writes_artifacts_and_learns(tmp_path):
    r = run(quick(epochs=3), out_dir=tmp_path / "run", progress="none", log=None)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "epochs", "device", "seconds", "dataset", "model", "seed"):
        assert key in m, key
    assert m["epochs"] == 3 and m["device"] == "numpy" and m["dataset"] == "digits" and m["model"] == "cnn"
    assert m["test_accuracy"] > 0.8, m  # 300 training images, 3 epochs
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert all(h[key] is not None for h in hist), key
    assert hist[0]["lr"] > hist[2]["lr"]  # cosine schedule
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").epoch == 3
    assert r.metrics["test_accuracy"] == m["test_accuracy"]


def test_same_seed_same_device_is_identical_and_seed_matters():
    a = run(quick(), progress="none", log=None)
    b = run(quick(), progress="none", log=None)
    c = run(quick(seed=1), progress="none", log=None)
    assert_same_weights(weights(a.model), weights(b.model))
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in h]
    assert strip(a.history) == strip(b.history)
    assert a.metrics["test_loss"] == b.metrics["test_loss"]
    assert strip(a.history) != strip(c.history)


def test_killed_run_resumes_bitwise(tmp_path, monkeypatch):
    """A 3-epoch cosine run stopped after epoch 1, then resumed, ends bitwise where the straight run does."""
    straight = run(quick(epochs=3, optimizer="momentum"), out_dir=tmp_path / "a", progress="none", log=None)
    real = _Trainer.train_epoch

    def dies_in_epoch_2(self, loader, epoch, epochs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, loader, epoch, epochs)
    monkeypatch.setattr(_Trainer, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(quick(epochs=3, optimizer="momentum"), out_dir=tmp_path / "b", progress="none", log=None)
    monkeypatch.setattr(_Trainer, "train_epoch", real)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.npz").epoch == 1
    resumed = run(TrainConfig(), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz", progress="none",
                  log=None)
    assert resumed.metrics["epochs"] == 3
    assert_same_weights(weights(straight.model), weights(resumed.model))
    sa, sb = straight.trainer.optimizer.state_dict(), resumed.trainer.optimizer.state_dict()
    for i in sa["state"]:
        np.testing.assert_array_equal(sa["state"][i]["momentum_buffer"], sb["state"][i]["momentum_buffer"])
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_n_then_resume_to_n_plus_m_is_bitwise(tmp_path):
    """2 epochs, then --resume to 3 in total, equals 3 straight (a schedule that does not depend on the length)."""
    straight = run(quick(epochs=3, schedule="exp", model="mlp"), out_dir=tmp_path / "a", progress="none", log=None)
    run(quick(epochs=2, schedule="exp", model="mlp"), out_dir=tmp_path / "b", progress="none", log=None)
    resumed = run(TrainConfig(epochs=3), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz",
                  progress="none", log=None)
    assert_same_weights(weights(straight.model), weights(resumed.model))  # includes Dropout-driven training
    assert straight.trainer.optimizer.lr == resumed.trainer.optimizer.lr


def _killed_in_epoch(monkeypatch, dies_at, fn):
    """Run fn() with training interrupted (KeyboardInterrupt) when epoch `dies_at` starts."""
    real = _Trainer.train_epoch

    def dies(self, loader, epoch, epochs):
        if epoch == dies_at:
            raise KeyboardInterrupt
        return real(self, loader, epoch, epochs)
    monkeypatch.setattr(_Trainer, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        fn()
    monkeypatch.setattr(_Trainer, "train_epoch", real)


@pytest.mark.parametrize("schedule", ["cosine", "warmup-cosine", "step"])
def test_extending_a_run_continues_from_its_lr_without_a_jump(tmp_path, monkeypatch, schedule):
    """A 4-epoch run stopped after epoch 2 and resumed to 6: the lr goes on from where it was (never up)."""
    lines = []
    _killed_in_epoch(monkeypatch, 3, lambda: run(quick(epochs=4, schedule=schedule), out_dir=tmp_path,
                                                  progress="none", log=None))
    at_stop = load_checkpoint(tmp_path / "checkpoint.npz").optimizer["param_groups"][0]["lr"]
    r = run(TrainConfig(epochs=6), out_dir=tmp_path, resume=tmp_path / "checkpoint.npz", progress="none",
            log=lines.append)
    lrs = [h["lr"] for h in r.history]
    assert len(lrs) == 6 and lrs[2] == at_stop > 0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])), lrs  # from the stop on, never up
    assert [l for l in lines if f"continues from lr {at_stop:.2e}" in l and "remaining 4 epochs" in l]


def test_extended_run_resumed_at_its_new_length_is_bitwise(tmp_path, monkeypatch):
    """After an extension, the bit-for-bit promise holds again for the new length."""
    for name in ("a", "b"):
        _killed_in_epoch(monkeypatch, 3, lambda: run(quick(epochs=4), out_dir=tmp_path / name, progress="none",
                                                      log=None))
    extend = TrainConfig(epochs=5)
    straight = run(extend, out_dir=tmp_path / "a", resume=tmp_path / "a" / "checkpoint.npz", progress="none", log=None)
    _killed_in_epoch(monkeypatch, 4, lambda: run(extend, out_dir=tmp_path / "b", resume=tmp_path / "b" /
                                                  "checkpoint.npz", progress="none", log=None))
    resumed = run(TrainConfig(), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz",
                  progress="none", log=None)
    assert resumed.history[2]["lr"] > 0 and len(resumed.history) == 5
    assert_same_weights(weights(straight.model), weights(resumed.model))
    assert [h["lr"] for h in straight.history] == [h["lr"] for h in resumed.history]


def test_resume_refuses_changed_options(tmp_path):
    from gpunet.checkpoint import CheckpointError
    run(quick(epochs=1), out_dir=tmp_path, progress="none", log=None)
    with pytest.raises(CheckpointError, match=r"checkpoint\.npz: cannot change lr"):
        run(TrainConfig(lr=0.5), resume=tmp_path / "checkpoint.npz", progress="none", log=None)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("rmsprop", "inverse-time"),
                                                ("adamw", "warmup-cosine"), ("adam", "none")])
def test_every_optimizer_and_schedule_trains(optimizer, schedule):
    r = run(quick(epochs=2, limit_train=150, optimizer=optimizer, schedule=schedule, clip_grad_norm=5.0),
            progress="none", log=None)
    assert np.isfinite(r.metrics["test_loss"]) and r.metrics["test_accuracy"] > 0.3


def test_config_defaults_and_validation():
    c = TrainConfig(dataset="cifar10").resolved()
    assert c.optimizer == "momentum" and c.augment and c.lr == 0.05 and c.weight_decay == 5e-4
    assert TrainConfig(optimizer="adamw").resolved().weight_decay == 1e-2
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs").resolved()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0).resolved()


# --- the Trainer on its own --------------------------------------------------------------------------

def tiny_setup(tmp_path=None, nan_at=None):
    """A linear classifier on separable blobs; nan_at=(epoch, step) poisons that batch."""
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    X = (rng.standard_normal((64, 2)) + 3 * y[:, None]).astype(np.float32)
    get_backend("numpy").seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)

    class Loader(DataLoader):
        def __iter__(self):
            epoch = self.epoch + 1
            for step, (xb, yb) in enumerate(super().__iter__(), 1):
                if nan_at == (epoch, step):
                    xb = xb.copy()
                    xb[0, 0] = np.nan
                yield xb, yb
    path = None if tmp_path is None else tmp_path / "ck.npz"
    return Trainer(model, opt, checkpoint_path=path, progress="none"), Loader(X, y, 8, seed=0)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_checkpoint(tmp_path):
    trainer, loader = tiny_setup(tmp_path, nan_at=(2, 3))
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 3.*ck\.npz \(epoch 1\), is kept"):
        trainer.fit(loader, epochs=3)
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck.epoch == 1 and np.isfinite(ck.model["0.weight"]).all()


def test_nan_in_first_epoch_says_no_checkpoint(tmp_path):
    trainer, loader = tiny_setup(tmp_path, nan_at=(1, 1))
    with pytest.raises(TrainingError, match="epoch 1, step 1.*no checkpoint had been written yet"):
        trainer.fit(loader, epochs=1)


def test_nonfinite_weights_at_epoch_end_are_never_checkpointed(tmp_path):
    """The last step's loss is finite, but its update made a weight NaN: the checkpoint of epoch 1 stays."""
    trainer, loader = tiny_setup(tmp_path)

    class Poison:
        def on_after_step(self, tr):
            if tr.epoch == 1 and tr.optimizer.state[0]["step"] == 16:  # the last step of epoch 2
                tr.model[0].weight.data[0, 0] = np.nan
    trainer.callbacks.append(Poison())
    with pytest.raises(TrainingError, match=r"weights became non-finite \(0\.weight\) at epoch 2.*epoch 1\), is kept"):
        trainer.fit(loader, epochs=3)
    assert load_checkpoint(tmp_path / "ck.npz").epoch == 1


def test_nonfinite_gradient_norm_with_clipping(tmp_path):
    trainer, loader = tiny_setup(tmp_path, nan_at=(1, 2))
    trainer.clip_grad_norm = 1.0
    with pytest.raises(TrainingError, match="gradient norm became non-finite.*epoch 1, step 2"):
        trainer.fit(loader, epochs=1)


def test_evaluate_counts_and_restores_mode():
    trainer, loader = tiny_setup()
    trainer.fit(loader, epochs=3)
    model = trainer.model.train()
    X, y = loader.X, loader.y
    r = evaluate(model, DataLoader(X, y, 10, shuffle=False))
    assert model.training and r["n"] == 64
    pred = (X @ model[0].weight.data.T + model[0].bias.data).argmax(1)
    assert r["accuracy"] == (pred == y).mean() and r["accuracy"] > 0.9


def test_progress_lines_and_bar():
    out = io.StringIO()
    trainer, loader = tiny_setup()
    trainer.progress = Progress("lines", out)
    trainer.fit(loader, epochs=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  train loss") and "img/s" in lines[1]

    class TTY(io.StringIO):
        def isatty(self):
            return True
    tty = TTY()
    trainer.progress = Progress("auto", tty)
    assert trainer.progress.mode == "bar"
    trainer.fit(loader, epochs=3)
    assert "batch/s" in tty.getvalue() and "epoch 3/3  train loss" in tty.getvalue()
    assert Progress("auto", io.StringIO()).mode == "lines"


class _Recorder:
    """A callback that logs its hooks, and adds a key to each epoch's history entry."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("begin")

    def on_before_step(self, trainer):
        self.calls.append("before")
        self.grad_seen = all(p.grad is not None for p in trainer.optimizer.params)

    def on_after_step(self, trainer):
        self.calls.append("after")

    def on_epoch_end(self, trainer, stats):
        self.calls.append("epoch")
        stats["recorded_at_epoch"] = stats["epoch"]

    def on_train_end(self, trainer):
        self.calls.append("end")


def test_trainer_callbacks_run_in_order_and_extend_the_checkpointed_history(tmp_path, rng):
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x, y = rng.standard_normal((12, 1, 2, 4)).astype(np.float32), rng.integers(0, 3, 12)
    loader = DataLoader(x, y, batch_size=4, shuffle=False)
    rec, partial = _Recorder(), type("OnlyEpochs", (), {"on_epoch_end": lambda self, t, s: s.update(x=1)})()
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), callbacks=[rec, partial], progress="none",
                      checkpoint_path=tmp_path / "c.npz")
    history = trainer.fit(loader, epochs=2)
    assert rec.calls == ["begin"] + (["before", "after"] * 3 + ["epoch"]) * 2 + ["end"] and rec.grad_seen
    assert [h["recorded_at_epoch"] for h in history] == [1, 2] and all(h["x"] == 1 for h in history)
    assert load_checkpoint(tmp_path / "c.npz").history[-1]["recorded_at_epoch"] == 2


def test_monitor_option_logs_health_without_changing_training(tmp_path):
    # exp: a schedule the later extension continues unchanged (a finished cosine run would go on at lr 0)
    plain = run(quick(schedule="exp"), out_dir=tmp_path / "plain", progress="none", log=None)
    mon = run(quick(monitor=3, schedule="exp"), out_dir=tmp_path / "mon", progress="none", log=None)
    assert_same_weights(weights(plain.model), weights(mon.model))  # observing does not perturb
    hist = json.loads((tmp_path / "mon" / "history.json").read_text())
    for h in hist:
        assert set(h["update_ratio"]) == {"0.weight", "3.body.0.weight", "3.body.2.weight", "6.weight"}
        assert all(1e-7 < v < 1 for v in h["update_ratio"].values()), h["update_ratio"]
        assert set(h["dead_relu"]) == {"0", "3.body.0", "3"} and all(0 <= v <= 1 for v in h["dead_relu"].values())
    assert (tmp_path / "mon" / "health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "plain" / "health.png").exists()
    assert "update_ratio" not in json.loads((tmp_path / "plain" / "history.json").read_text())[0]
    with pytest.raises(ValueError, match="monitor must be >= 1"):
        quick(monitor=0).resolved()
    # a resumed run may switch the monitor on (it does not change the training)
    more = run(quick(epochs=3, monitor=2, schedule="exp"), out_dir=tmp_path / "plain", resume=tmp_path / "plain" / "checkpoint.npz",
               progress="none", log=None, explicit={"epochs", "monitor"})
    hist = json.loads((tmp_path / "plain" / "history.json").read_text())
    assert "update_ratio" not in hist[1] and "update_ratio" in hist[2] and more.trainer.epoch == 3
