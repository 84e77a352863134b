"""Regularisation as the notes teach it: the L2 penalty in the loss, and weight decay that skips biases and
BatchNorm parameters (parameter groups), both checked against PyTorch's weight_decay."""
import json

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.cli.main import main
from gpunet.training import TrainConfig, run

torch = pytest.importorskip("torch")


def _models(seed=0):
    """Ours and PyTorch's Linear-ReLU-BatchNorm-Linear with the same float64 weights (every gradient nonzero)."""
    get_backend("numpy").seed(seed)
    ours = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)).to(None, np.float64)
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.BatchNorm1d(6),
                                 torch.nn.Linear(6, 3)).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def _torch_groups(model, wd):
    ps = list(model.parameters())
    return [{"params": [p for p in ps if p.ndim >= 2], "weight_decay": wd},
            {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0}]


def _train(ours, theirs, opt, topt, ours_loss, steps=5, rng=None):
    rng = rng or np.random.default_rng(0)
    ce = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
        opt.zero_grad()
        ours_loss(ours(nn.Parameter(x, requires_grad=False)), y).backward()
        opt.step()
        topt.zero_grad()
        ce(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()


def _assert_same(ours, theirs):
    ref = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v, ref[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_decay_groups_take_weights_and_leave_biases_and_batchnorm():
    model, _ = _models()
    decayed, kept = optim.decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decayed["params"]] == ["0.weight", "3.weight"] and decayed["weight_decay"] == 0.1
    assert [names[id(p)] for p in kept["params"]] == ["0.bias", "2.weight", "2.bias", "3.bias"]
    assert kept["weight_decay"] == 0.0


@pytest.mark.parametrize("make,tmake", [
    (lambda g: optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True), lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9,
                                                                                          nesterov=True)),
    (lambda g: optim.Adam(g, lr=0.01), lambda g: torch.optim.Adam(g, lr=0.01)),
    (lambda g: optim.AdamW(g, lr=0.01), lambda g: torch.optim.AdamW(g, lr=0.01)),
    (lambda g: optim.RMSprop(g, lr=0.01), lambda g: torch.optim.RMSprop(g, lr=0.01))])
def test_grouped_weight_decay_matches_pytorch_param_groups(make, tmake):
    ours, theirs = _models()
    opt, topt = make(optim.decay_groups(ours, 0.05)), tmake(_torch_groups(theirs, 0.05))
    _train(ours, theirs, opt, topt, nn.SoftmaxCrossEntropy())
    _assert_same(ours, theirs)
    before = ours.state_dict()["2.bias"].copy()
    state = opt.state_dict()  # the groups' decays survive a state_dict round trip
    fresh = make(optim.decay_groups(ours, 0.0))  # same order, other decay: the checkpoint's comes back
    fresh.load_state_dict(state)
    assert fresh._group_decay == opt._group_decay == [0.05, 0.05, 0.0, 0.0, 0.0, 0.0]
    assert np.array_equal(before, ours.state_dict()["2.bias"])


def test_without_groups_every_parameter_decays_as_in_pytorch():
    ours, theirs = _models()
    opt = optim.SGD(ours.parameters(), lr=0.1, weight_decay=0.05)
    _train(ours, theirs, opt, torch.optim.SGD(theirs.parameters(), lr=0.1, weight_decay=0.05),
           nn.SoftmaxCrossEntropy())
    _assert_same(ours, theirs)


def test_group_errors_name_the_problem():
    model, _ = _models()
    with pytest.raises(ValueError, match="group 0 sets lr; groups may differ in weight_decay only"):
        optim.SGD([{"params": list(model.parameters()), "lr": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="group 1: invalid weight_decay -1"):
        optim.SGD([{"params": [model[0].weight]}, {"params": [model[0].bias], "weight_decay": -1}], lr=0.1)
    with pytest.raises(TypeError, match="group 1 must be a dict"):
        optim.SGD([{"params": [model[0].weight]}, model[0].bias], lr=0.1)


def test_l2_penalty_is_in_the_loss_and_equals_sgd_weight_decay_lambda_over_m():
    lam, m = 0.3, 8
    ours, theirs = _models()
    crit = nn.L2Penalized(nn.SoftmaxCrossEntropy(), ours, lam)
    x, y = np.random.default_rng(1).standard_normal((m, 4)), np.arange(m) % 3
    ours.eval()  # these looks leave BatchNorm's running statistics alone
    plain = float(nn.SoftmaxCrossEntropy()(ours(x), y))
    w2 = sum(float((v ** 2).sum()) for k, v in ours.state_dict().items() if k.endswith("weight") and v.ndim == 2)
    assert float(crit(ours(x), y)) == pytest.approx(plain + lam / (2 * m) * w2, rel=1e-12)
    assert float(crit(ours(x), y)) > plain  # the sanity check: regularisation raises the loss

    ours.train()
    # SGD on the penalised loss == PyTorch SGD with weight_decay lam/m on the weights (batch size m)
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(_torch_groups(theirs, lam / m), lr=0.1, momentum=0.9)
    _train(ours, theirs, opt, topt, crit)
    _assert_same(ours, theirs)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        nn.L2Penalized(nn.SoftmaxCrossEntropy(), ours, -0.1)


QUICK = dict(dataset="digits", device="cpu", limit_train=200, epochs=1, model="mlp", schedule="none")


def test_train_with_l2_reports_a_higher_loss_and_cli_reaches_it(tmp_path):
    plain = run(TrainConfig(**QUICK), progress="none", log=None)
    penalised = run(TrainConfig(**QUICK, l2=5.0), progress="none", log=None)
    assert penalised.history[0]["train_loss"] > plain.history[0]["train_loss"]
    assert penalised.history[0]["val_loss"] > plain.history[0]["val_loss"]
    with pytest.raises(ValueError, match="--l2 must be a finite number >= 0"):
        TrainConfig(l2=float("nan")).resolved()
    assert main(["train", "--device", "cpu", "--limit-train", "200", "--model", "mlp", "--epochs", "1", "--l2",
                 "0.5", "--weight-decay", "1e-3", "--quiet", "--out", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["config"]["l2"] == 0.5 and m["config"]["weight_decay"] == 1e-3


def test_recipe_weight_decay_leaves_biases_alone():
    r = run(TrainConfig(**QUICK, optimizer="sgd", weight_decay=0.5), progress="none", log=None)
    opt, names = r.trainer.optimizer, {id(p): n for n, p in r.model.named_parameters()}
    decays = {names[id(p)]: d for p, d in zip(opt.params, opt._group_decay)}
    assert len(decays) == len(names) and {d for n, d in decays.items() if n.endswith("bias")} == {0.0}
    assert all(d == (0.5 if r.model.state_dict()[n].ndim >= 2 else 0.0) for n, d in decays.items())
    assert 0.5 in decays.values()
