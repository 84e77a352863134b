"""Early stopping: the rule (patience, min_delta, direction), best weights restored, the record of why, resume."""
import json

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.checkpoint import CheckpointError, load_checkpoint
from gpunet.cli.main import main
from gpunet.training import EarlyStopping, TrainConfig, run
from gpunet.training.trainer import Trainer as _Trainer
from gpunet.data import DataLoader
from gpunet.training import Trainer
from helpers import assert_same_weights, weights


def tiny_setup(tmp_path=None):
    """A linear classifier on separable blobs."""
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    X = (rng.standard_normal((64, 2)) + 3 * y[:, None]).astype(np.float32)
    get_backend("numpy").seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    path = None if tmp_path is None else tmp_path / "ck.npz"
    return (Trainer(model, optim.SGD(model.parameters(), lr=0.1), checkpoint_path=path, progress="none"),
            DataLoader(X, y, 8, seed=0))


class _Model:
    """Stands in for a model: state_dict() is the epoch it was taken at."""
    def __init__(self):
        self.epoch, self.loaded = 0, None

    def state_dict(self):
        return {"w": np.array([self.epoch])}

    def load_state_dict(self, state):
        self.loaded = int(state["w"][0])


def _feed(es, values, key="val_loss"):
    """Epochs 1.. with the given values; return the epoch at which it stopped (None) and the model."""
    model = _Model()
    for epoch, v in enumerate(values, 1):
        model.epoch = epoch
        if es.update(epoch, {key: v}, model):
            return epoch, model
    return None, model


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best():
    es = EarlyStopping(patience=3)
    stopped, model = _feed(es, [1.0, 0.9, 0.95, 0.91, 0.92, 0.5])
    assert stopped == 5 and es.best_epoch == 2 and es.best == 0.9 and model.loaded == 2
    assert "val_loss has not decreased by more than 0 for 3 epochs (best 0.9 at epoch 2)" in es.reason()
    assert es.summary()["stopped_epoch"] == 5


def test_an_improvement_resets_the_wait():
    stopped, _ = _feed(EarlyStopping(patience=2), [1.0, 1.1, 0.8, 0.9, 0.7, 0.75, 0.76])
    assert stopped == 7


def test_min_delta_demands_a_real_improvement():
    es = EarlyStopping(patience=2, min_delta=0.05)
    stopped, model = _feed(es, [1.0, 0.97, 0.96, 0.5])  # 0.97 and 0.96 are within 0.05 of 1.0
    assert stopped == 3 and es.best_epoch == 1 and model.loaded == 1


def test_accuracy_is_maximised():
    es = EarlyStopping(monitor="val_acc", patience=1)
    stopped, model = _feed(es, [0.5, 0.7, 0.6], key="val_acc")
    assert stopped == 3 and es.best == 0.7 and model.loaded == 2
    assert "has not increased" in es.reason()


@pytest.mark.parametrize("kwargs,match", [(dict(monitor="loss"), "monitor must be one of"),
                                          (dict(patience=0), "patience must be an integer >= 1"),
                                          (dict(min_delta=-1.0), "min_delta must be a finite number >= 0")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_trainer_stops_restores_the_best_weights_and_records_why(tmp_path):
    trainer, loader = tiny_setup(tmp_path)
    seen = {}
    trainer.callbacks.append(type("Snap", (), {"on_epoch_end": lambda self, t, s: seen.__setitem__(
        s["epoch"], weights(t.model))})())
    # min_delta so large that no epoch after the first counts as an improvement: stops at epoch 1 + patience
    trainer.early_stopping = EarlyStopping(monitor="train_loss", patience=2, min_delta=1e9)
    history = trainer.fit(loader, epochs=10)
    assert [h["epoch"] for h in history] == [1, 2, 3] and trainer.epoch == 3
    assert "stopped" not in history[1] and "stopped at epoch 3 with the weights of epoch 1" in history[2]["stopped"]
    assert_same_weights(weights(trainer.model), seen[1])
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck.epoch == 3 and ck.extra["early_stopping"]["stopped_epoch"] == 3
    np.testing.assert_array_equal(ck.model["0.weight"], seen[1]["0.weight"])
    assert trainer.fit(loader, epochs=20) == history  # a stopped trainer stays stopped


def test_val_monitor_without_a_val_loader_is_refused():
    trainer, loader = tiny_setup()
    trainer.early_stopping = EarlyStopping()
    with pytest.raises(ValueError, match="needs a validation loader"):
        trainer.fit(loader, epochs=2)


QUICK = dict(dataset="digits", device="cpu", limit_train=300, batch_size=32, model="mlp", schedule="exp",
             early_stopping=2)


def _stops_early(monkeypatch):
    """Make every epoch after the first a non-improvement (a min_delta no change can beat)."""
    real = EarlyStopping.__init__

    def init(self, monitor="val_loss", patience=5, min_delta=0.0):
        real(self, monitor, patience, 1e9)
    monkeypatch.setattr(EarlyStopping, "__init__", init)


def test_run_stops_writes_why_and_resume_continues_bitwise(tmp_path, monkeypatch):
    _stops_early(monkeypatch)
    straight = run(TrainConfig(**QUICK, epochs=6), out_dir=tmp_path / "a", progress="none", log=None)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert m["epochs"] == 3 and m["early_stopping"]["stopped_epoch"] == 3 and m["early_stopping"]["best_epoch"] == 1
    assert "stopped at epoch 3" in m["early_stopping"]["reason"] and hist[-1]["stopped"] == m["early_stopping"]["reason"]

    real = _Trainer.train_epoch

    def dies_in_epoch_3(self, loader, epoch, epochs):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(self, loader, epoch, epochs)
    monkeypatch.setattr(_Trainer, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(**QUICK, epochs=6), out_dir=tmp_path / "b", progress="none", log=None)
    monkeypatch.setattr(_Trainer, "train_epoch", real)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.npz").extra["early_stopping"]["wait"] == 1
    logs = []
    resumed = run(TrainConfig(), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz", progress="none",
                  log=logs.append)
    assert resumed.metrics["epochs"] == 3 and resumed.metrics["early_stopping"] == m["early_stopping"]
    assert_same_weights(weights(straight.model), weights(resumed.model))
    assert any("early stopping: val_loss has not decreased" in line for line in logs)

    logs = []  # resuming the stopped run trains nothing and evaluates the best weights again
    again = run(TrainConfig(), out_dir=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.npz", progress="none",
                log=logs.append)
    assert again.metrics["epochs"] == 3 and again.metrics["test_loss"] == straight.metrics["test_loss"]
    assert any("stopped early" in line and "nothing left to train" in line for line in logs)


def test_resume_cannot_add_or_change_early_stopping(tmp_path):
    run(TrainConfig(**{**QUICK, "early_stopping": None}, epochs=1), out_dir=tmp_path / "a", progress="none", log=None)
    with pytest.raises(CheckpointError, match="cannot change early-stopping"):
        run(TrainConfig(early_stopping=2), out_dir=tmp_path / "a", resume=tmp_path / "a" / "checkpoint.npz",
            progress="none", log=None, explicit={"early_stopping"})


def test_config_validation():
    with pytest.raises(ValueError, match="--early-stopping must be >= 1"):
        TrainConfig(early_stopping=0).resolved()
    with pytest.raises(ValueError, match="needs val_fraction > 0"):
        TrainConfig(early_stopping=3, val_fraction=0).resolved()


def test_cli_early_stopping(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--limit-train", "200", "--model", "mlp", "--epochs", "2",
                 "--early-stopping", "5", "--quiet", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["early_stopping"] == 5 and m["early_stopping"]["patience"] == 5
    assert m["early_stopping"]["stopped"] is False and m["epochs"] == 2
