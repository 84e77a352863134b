"""Transfer learning (freeze, partial loads, head replacement, per-group learning rates) on digits 0-4 -> 5-9,
and batch-norm folding checked against the unfolded model in eval mode."""
import numpy as np
import pytest

from gpunet import io, nn, optim, transfer
from gpunet.backend import get_backend
from gpunet.data import DataLoader, load_digits
from gpunet.training import Trainer, evaluate


def mlp(seed: int, classes: int = 5):
    get_backend("numpy").seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, classes))


# --- freezing, partial loads, heads -------------------------------------------------------------------

def test_freeze_selects_by_name_and_unfreeze_restores():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    momentum = model[1].momentum
    assert transfer.freeze(model, exclude="2") == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["2.weight", "2.bias"]
    assert model[1].momentum == 0.0  # a frozen batch norm keeps its running statistics
    assert transfer.unfreeze(model, include=["1"]) == ["1.weight", "1.bias"]
    assert model[1].momentum == momentum
    assert transfer.freeze(model, include="0.bias") == ["0.bias"]
    assert len(transfer.trainable_parameters(model)) == 4
    with pytest.raises(KeyError, match="'body' names no module or parameter"):
        transfer.freeze(model, include="body")


def test_load_pretrained_reports_missing_unexpected_and_mismatched():
    src = mlp(0, classes=5).state_dict()
    src["extra.weight"] = np.zeros(3, np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 7), nn.Linear(7, 2))
    report = transfer.load_pretrained(model, src)
    assert report.loaded == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert report.mismatched == {"5.weight": ((5, 64), (7, 64)), "5.bias": ((5,), (7,))}
    assert report.missing == ["6.weight", "6.bias"] and report.unexpected == ["extra.weight"]
    np.testing.assert_array_equal(model[3].weight.data, src["3.weight"])
    assert "shape mismatch, skipped: 5.weight checkpoint (5, 64) vs model (7, 64)" in str(report)
    with pytest.raises(ValueError, match="shape mismatch for '5.weight'"):
        transfer.load_pretrained(model, src, skip_mismatched=False)


def test_replace_head_keeps_names_device_and_dtype():
    model = mlp(0).to(dtype=np.float64)
    old = transfer.replace_head(model, num_classes=3)
    assert isinstance(old, nn.Linear) and old.out_features == 5
    assert model[5].weight.shape == (3, 64) and model[5].weight.dtype == np.float64
    assert list(model.state_dict())[-2:] == ["5.weight", "5.bias"]
    custom = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    transfer.replace_head(model, head=custom)
    assert model(np.zeros((1, 1, 8, 8))).shape == (1, 2) and transfer.last_linear(model) == "5.2"
    with pytest.raises(TypeError, match="exactly one of num_classes or head"):
        transfer.replace_head(model)
    with pytest.raises(KeyError, match="'9' names no submodule"):
        transfer.replace_head(model, 2, name="9")


def _subset(x, y, classes):
    keep = np.isin(y, classes)
    return x[keep], (y[keep] - min(classes)).astype(np.int64)


def _fit(model, opt, data, classes, epochs, scheduler=None):
    xtr, ytr = _subset(data.x_train, data.y_train, classes)
    xte, yte = _subset(data.x_test, data.y_test, classes)
    Trainer(model, opt, scheduler=scheduler, progress="none").fit(DataLoader(xtr, ytr, 32, seed=0), epochs=epochs)
    return evaluate(model, DataLoader(xte, yte, 256, shuffle=False))["accuracy"]


def test_pretrain_on_digits_0_to_4_then_transfer_to_5_to_9(tmp_path):
    pytest.importorskip("sklearn")
    data = load_digits()
    pre = mlp(0)
    acc_pre = _fit(pre, optim.Adam(pre.parameters(), lr=1e-2), data, [0, 1, 2, 3, 4], 10)
    assert acc_pre >= 0.95
    io.save(pre, tmp_path / "pretrained.safetensors")

    # new task: a fresh model takes the pretrained body; the head is replaced, the body frozen
    model = mlp(1)
    report = transfer.load_pretrained(model, io.load(tmp_path / "pretrained.safetensors"))
    assert len(report.loaded) == 6 and not (report.missing or report.unexpected or report.mismatched)
    transfer.replace_head(model, num_classes=5)
    head = transfer.last_linear(model)
    assert transfer.freeze(model, exclude=head) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    body = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    head_before = model[5].weight.data.copy()
    acc_head = _fit(model, optim.Adam(transfer.trainable_parameters(model), lr=1e-2, weight_decay=1e-3),
                    data, [5, 6, 7, 8, 9], 20)
    for k, v in body.items():  # the frozen body did not move by a single bit (weight decay included)
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    assert not np.array_equal(model[5].weight.data, head_before)
    assert acc_head >= 0.8  # chance is 0.2: the new head learns on the frozen pretrained features

    # fine-tune everything, the body at a tenth of the head's learning rate, under a schedule
    transfer.unfreeze(model)
    opt = transfer.finetune_optimizer(model, lr=5e-3, body_lr_scale=0.1)
    assert [o.lr for o, _ in opt.groups] == [5e-3, 5e-4]
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    sched.step()
    assert opt.groups[1][0].lr == pytest.approx(0.1 * opt.groups[0][0].lr)
    body_w, head_w = model[1].weight.data.copy(), model[5].weight.data.copy()
    acc_ft = _fit(model, opt, data, [5, 6, 7, 8, 9], 5)
    rel = {n: float(np.linalg.norm(model[i].weight.data - w) / np.linalg.norm(w))
           for n, i, w in (("body", 1, body_w), ("head", 5, head_w))}
    assert 0 < rel["body"] < rel["head"]
    assert acc_ft >= acc_head
    state = opt.state_dict()
    opt2 = transfer.finetune_optimizer(model, lr=1.0, body_lr_scale=0.5)
    opt2.load_state_dict(state)
    assert opt2.lr == opt.lr and [s for _, s in opt2.groups] == [1.0, 0.1]


def test_grouped_optimizer_works_with_trainer_schedules_and_checkpoints(tmp_path, rng):
    def build():
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = transfer.finetune_optimizer(model, lr=1e-2, body_lr_scale=0.1, weight_decay=1e-4)
        return model, opt, optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    model, opt, sched = build()
    Trainer(model, opt, scheduler=sched, checkpoint_path=tmp_path / "ck.npz", progress="none").fit(
        DataLoader(x, y, 5), epochs=2)
    assert opt.lr == pytest.approx(sched.lr_at(8)) and opt.groups[1][0].lr == pytest.approx(0.1 * opt.lr)
    model2, opt2, sched2 = build()
    Trainer(model2, opt2, scheduler=sched2, progress="none").resume(tmp_path / "ck.npz")
    assert [o.lr for o, _ in opt2.groups] == [o.lr for o, _ in opt.groups]
    for (a, _), (b, _) in zip(opt.groups, opt2.groups):
        for sa, sb in zip(a.state, b.state):
            np.testing.assert_array_equal(sa["exp_avg"], sb["exp_avg"])
    with pytest.raises(ValueError, match="saved 2 groups, this optimizer has 1"):
        transfer.GroupedOptimizer([(optim.SGD(model.parameters(), lr=0.1), 1.0)]).load_state_dict(opt.state_dict())


# --- batch-norm folding --------------------------------------------------------------------------------

def _randomise_bn(model, rng):
    """Running statistics and affine parameters far from their defaults, as after training."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c, dt = m.num_features, m.running_mean.dtype
            m.running_mean = rng.standard_normal(c).astype(dt)
            m.running_var = rng.uniform(0.2, 3.0, c).astype(dt)
            if m.affine:
                m.weight.data = (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(dt)
                m.bias.data = rng.standard_normal(c).astype(dt)


def foldable_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),                            # conv with bias
        nn.Conv2d(8, 8, 3, padding=1, activation="relu"), nn.BatchNorm2d(8),                    # fused ReLU: kept
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, affine=False)),
                    activation="relu"),                                                          # conv without bias
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.BatchNorm1d(16),                                                                      # after a ReLU: kept
        nn.Linear(16, 4))


def test_fold_batchnorm_matches_unfolded_model_in_eval(rng):
    model = foldable_net()
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    model(x)  # one training step's worth of statistics, then far-from-default values
    _randomise_bn(model, rng)
    folded, report = transfer.fold_batchnorm(model, return_report=True)
    assert report.folded == [("0", "1"), ("8", "9"), ("5.body.0", "5.body.1")]
    assert [b for b, _ in report.skipped] == ["4", "11"]
    assert "fused ReLU" in report.skipped[0][1] and "follows ReLU '10'" in report.skipped[1][1]
    assert not folded.training and model.training  # the original is untouched
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[4], nn.BatchNorm2d)
    assert folded[5].body[0].bias is not None and model[5].body[0].bias is None
    model.eval()
    ref = model(x)
    np.testing.assert_allclose(folded(x), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    with pytest.warns(RuntimeWarning, match="kept 4: follows Conv2d '3' with a fused ReLU"):
        transfer.fold_batchnorm(model)


def test_fold_batchnorm_in_float64_is_exact_to_rounding(rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(3),
                          nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).to(dtype=np.float64).eval()
    _randomise_bn(model, rng)
    x = rng.standard_normal((2, 2, 7, 7))
    folded, report = transfer.fold_batchnorm(model, return_report=True)
    assert len(report.folded) == 2 and not report.skipped
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert folded[0].bias.dtype == np.float64
