"""Diagnostics: per-layer activation statistics, the initialisation experiment's trends (and its CLI), and
the training monitor's update ratios and dead-ReLU shares written into a history."""
import json

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.cli.main import main as cli
from gpunet.diagnostics import (TrainingMonitor, activation_stats, init_experiment, is_activation, record_outputs,
                                tensor_stats)
from gpunet.diagnostics.init_experiment import std_ratio


def test_activation_stats_per_layer(rng):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Tanh())
    model[0].bias.data[:2] = -1e3  # units 0 and 1 can never fire
    x = rng.standard_normal((32, 4)).astype(np.float32)
    model.train()
    stats = activation_stats(model, x, bins=10)
    assert model.training and all("forward" not in m.__dict__ for m in model.modules())  # restored
    assert [(s.name, s.kind, s.shape) for s in stats] == [("0", "Linear", (32, 6)), ("1", "ReLU", (32, 6)),
                                                           ("2", "Linear", (32, 3)), ("3", "Tanh", (32, 3))]
    model.eval()
    h = np.maximum(model[0](x).astype(np.float64), 0)
    relu = stats[1]
    assert relu.mean == pytest.approx(h.mean()) and relu.std == pytest.approx(h.std())
    assert relu.max == pytest.approx(h.max()) and relu.min == 0.0
    assert relu.frac_zero == pytest.approx((h == 0).mean()) and relu.dead_fraction == pytest.approx(2 / 6)
    assert sum(relu.hist_counts) == h.size and len(relu.hist_edges) == 11
    assert stats[3].max < 1 and stats[3].dead_fraction == 0.0
    only = activation_stats(model, x, select=is_activation)
    assert [s.kind for s in only] == ["ReLU", "Tanh"]
    json.dumps([s.to_dict() for s in stats])  # JSON-ready


def test_record_outputs_sees_fused_relu_convs_and_nests(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, activation="relu"), nn.Flatten(), nn.Linear(2 * 16, 2))
    assert is_activation(model[0]) and not is_activation(nn.Conv2d(1, 2, 3))
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    with record_outputs(model, is_activation) as outer:
        with record_outputs(model) as inner:
            model(x)
        model(x)
    assert [n for n, _, _ in inner] == ["0", "1", "2"] and [n for n, _, _ in outer] == ["0", "0"]
    assert (outer[0][2] >= 0).all() and all("forward" not in m.__dict__ for m in model.modules())
    s = tensor_stats("conv", "Conv2d", outer[0][2], bins=5)
    assert s.shape == (2, 2, 4, 4) and 0 <= s.dead_fraction <= 1


@pytest.fixture(scope="module")
def experiment():
    return init_experiment(depth=10, width=256, batch=400, seed=0, device="numpy")


def test_init_experiment_reproduces_the_classic_trends(experiment):
    r = experiment
    assert set(r["results"]) == {f"{a}/{i}" for a in ("tanh", "relu") for i in ("small-gaussian", "xavier", "he")}
    assert all(len(v) == 10 for v in r["results"].values())
    # He-initialised ReLU: the std stays roughly constant with depth
    he = [s["std"] for s in r["results"]["relu/he"]]
    assert 0.5 < std_ratio(r, "relu/he") < 2 and max(he) / min(he) < 2
    # small Gaussian weights: the signal collapses towards 0, for tanh and ReLU alike
    for act in ("tanh", "relu"):
        stds = [s["std"] for s in r["results"][f"{act}/small-gaussian"]]
        assert std_ratio(r, f"{act}/small-gaussian") < 1e-4
        assert all(b < 0.5 * a for a, b in zip(stds, stds[1:]))  # shrinking at every layer
    # Xavier keeps tanh healthy: a slow decline, far from collapse and from saturation
    xt = r["results"]["tanh/xavier"]
    assert std_ratio(r, "tanh/xavier") > 0.2 and xt[-1]["std"] > 0.1
    assert max(s["frac_saturated"] for s in xt) < 0.02
    # ... but halves ReLU's variance per layer: it decays, unlike He
    assert 1e-3 < std_ratio(r, "relu/xavier") < 0.2
    # ReLU zeroes about half of everything
    assert all(0.4 < s["frac_zero"] < 0.6 for s in r["results"]["relu/he"])


def test_diagnose_init_cli_writes_figure_and_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli(["diagnose", "init", "--out", str(tmp_path), "--depth", "4", "--width", "64", "--batch", "128",
                "--device", "cpu"]) == 0
    data = json.loads((tmp_path / "init_stats.json").read_text())
    assert data["config"]["depth"] == 4 and len(data["results"]["relu/he"]) == 4
    assert (tmp_path / "init_stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "relu/he" in out and "init_stats.png" in out


def test_training_monitor_update_ratios_and_dead_relus(tmp_path, rng):
    """Drives the callback exactly as the Trainer hook would (see TrainingMonitor's docstring) and writes
    the per-epoch summaries into a history file."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    model[0].bias.data[:4] = -1e3                    # 4 of 16 units of the first ReLU are dead
    model[2].weight.requires_grad = False            # a frozen layer reports no update ratio
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    opt, loss_fn = optim.SGD(model.parameters(), lr=0.1), nn.SoftmaxCrossEntropy()
    monitor = TrainingMonitor(model, every=2)
    history = []
    monitor.on_train_begin()
    for epoch in range(2):
        model.train()
        for i in range(0, 64, 16):
            opt.zero_grad()
            loss = loss_fn(model(x[i:i + 16]), y[i:i + 16])
            model.backward(loss_fn.backward())
            monitor.on_before_step()
            opt.step()
            monitor.on_after_step()
        model.eval()
        model(x)  # evaluation forwards do not count
        stats = {"epoch": epoch + 1, "train_loss": float(loss)}
        monitor.on_epoch_end(None, stats)
        history.append(stats)
    monitor.on_train_end()
    assert all("forward" not in m.__dict__ for m in model.modules())
    (tmp_path / "history.json").write_text(json.dumps(history))
    saved = json.loads((tmp_path / "history.json").read_text())
    for h in saved:
        assert set(h["update_ratio"]) == {"0.weight", "4.weight"}  # weights only; the frozen one is absent
        assert all(1e-5 < v < 1 for v in h["update_ratio"].values())
        assert h["dead_relu"]["1"] == pytest.approx(4 / 16)
        assert 0 <= h["dead_relu"]["3"] < 1
    assert monitor.history == [{k: h[k] for k in ("update_ratio", "dead_relu")} for h in saved]
    monitor.on_before_step()                         # step 9: measured (every=2)
    model[0].weight.data = model[0].weight.data * 1.01  # a known update: ratio 0.01
    monitor.on_after_step()
    assert monitor.on_epoch_end()["update_ratio"]["0.weight"] == pytest.approx(0.01, rel=1e-4)
