"""The classic networks (LeNet-5 as in 1998, VGG, AlexNet with local response normalisation, Inception),
LRN against PyTorch, and the rotation augmentation."""
import json

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.cli.main import main
from gpunet.data import Compose, DataLoader, RandomCropFlip, RandomRotation, rotate
from gpunet.gradcheck import gradcheck
from gpunet.models import build_model
from gpunet.training import TrainConfig, run
from gpunet.training.recipe import build_augment

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("size", [5, 4, 1])
def test_lrn_matches_pytorch(rng, size):
    x = rng.standard_normal((2, 7, 3, 4))
    dy = rng.standard_normal(x.shape)
    ours = nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0)
    t = gpunet.tensor(x, requires_grad=True)
    y = ours(t)
    (y * gpunet.tensor(dy)).sum().backward()
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0)(tx)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_lrn_gradcheck_every_backend_and_errors(rng, backend):
    m = nn.LocalResponseNorm(3, alpha=1.0, beta=0.75, k=1.0)
    assert gradcheck(m, rng.standard_normal((2, 4, 2, 2))).ok
    x = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(backend.asnumpy(nn.LocalResponseNorm().to(backend)(backend.asarray(x))),
                               nn.LocalResponseNorm()(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        nn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match="k must be > 0"):
        nn.LocalResponseNorm(5, k=0.0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, ...\)"):
        nn.LocalResponseNorm()(np.zeros((2, 3), np.float32))


def _kinds(model):
    return {type(m) for m in model.modules()}


def test_lenet_departures_and_the_classic_option():
    modern, classic = build_model("lenet", (1, 28, 28), 10, seed=0), build_model("lenet5-classic", (1, 28, 28), 10)
    assert {nn.ReLU, nn.MaxPool2d} <= _kinds(modern) and not {nn.Tanh, nn.AvgPool2d} & _kinds(modern)
    assert {nn.Tanh, nn.AvgPool2d} <= _kinds(classic) and not {nn.ReLU, nn.MaxPool2d} & _kinds(classic)
    assert all(m.activation is None for m in classic.modules() if isinstance(m, nn.Conv2d))
    assert [tuple(v.shape) for v in modern.state_dict().values()] == \
        [tuple(v.shape) for v in classic.state_dict().values()]  # same layout, different functions
    assert "1998" in build_model.__globals__["lenet"].__doc__


def test_classic_models_have_their_signature_layers():
    assert nn.LocalResponseNorm in _kinds(build_model("alexnet", (3, 32, 32), 10))
    inception = build_model("inception", (3, 32, 32), 10)
    concats = [m for m in inception.modules() if isinstance(m, nn.Concat)]
    assert len(concats) == 2 and all(len(c._modules) == 4 for c in concats)
    assert nn.GlobalAvgPool2d in _kinds(inception)
    vgg = build_model("vgg", (1, 8, 8), 10)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs)  # 8x8: two blocks of two 3x3
    assert len([m for m in build_model("vgg", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]) == 6
    with pytest.raises(ValueError, match="alexnet: images must be at least 8x8"):
        build_model("alexnet", (1, 6, 6), 10)


@pytest.mark.parametrize("name,lr", [("lenet5-classic", 2e-3), ("vgg", 2e-3), ("alexnet", 1e-3), ("inception", 2e-3)])
def test_each_classic_model_starts_unsure_and_overfits_a_tiny_batch(name, lr):
    """The notes' two sanity checks (gpunet.sanity): loss ~log(10) at init, 20 digits learnt by heart."""
    from gpunet.data import load_digits
    from gpunet.sanity import initial_loss_check, overfit_tiny_batch
    data = load_digits()
    x, y = data.x_train[:20], data.y_train[:20]
    model = build_model(name, data.in_shape, 10, seed=0)
    assert initial_loss_check(model, x, y, 10).ok
    assert overfit_tiny_batch(model, x, y, steps=100, lr=lr) == 1.0  # AlexNet's two dropouts need the lower lr


@pytest.mark.slow
@pytest.mark.parametrize("name,floor", [("lenet5-classic", 0.93), ("vgg", 0.97), ("alexnet", 0.93),
                                        ("inception", 0.96)])
def test_classic_models_on_full_digits(name, floor):
    """`gpunet train --model NAME` with the digits defaults (15 epochs); docs/curriculum.md has the figures."""
    assert run(TrainConfig(dataset="digits", device="cpu", model=name), progress="none",
               log=None).metrics["test_accuracy"] >= floor


def test_rotate_quarter_turns_and_identity(rng):
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    r = rotate(x, [90, -90, 180])
    np.testing.assert_array_equal(r[0], np.rot90(x[0], 1, axes=(1, 2)))  # counter-clockwise
    np.testing.assert_array_equal(r[1], np.rot90(x[1], -1, axes=(1, 2)))
    np.testing.assert_array_equal(r[2], x[2, :, ::-1, ::-1])
    y = rng.standard_normal((2, 1, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(rotate(y, [0, 0]), y)
    assert rotate(y, [10, -10]).dtype == np.float32


def test_small_rotation_keeps_the_centre_and_moves_the_corners():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, :] = 1  # a horizontal bar through the centre
    r = rotate(x, [30])[0, 0]
    assert r[4, 4] == pytest.approx(1)             # the centre stays
    assert r[4, 8] < 0.5 and r[2, 8] > 0.3          # the right end tilts up (counter-clockwise)
    assert r.sum() == pytest.approx(x.sum(), rel=0.15)


def test_random_rotation_is_seeded_and_bounded(rng):
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    a = RandomRotation(10)(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, RandomRotation(10)(x, np.random.default_rng(5)))
    assert not np.array_equal(a, x)
    np.testing.assert_array_equal(RandomRotation(0)(x, np.random.default_rng(5)), x)
    with pytest.raises(ValueError, match=r"degrees must lie in \[0, 180\]"):
        RandomRotation(-1)


def test_recipe_augmentation_rotates_then_shifts_and_the_cli_turns_it_on(tmp_path):
    aug = build_augment("digits")
    assert isinstance(aug, Compose) and isinstance(aug.steps[0], RandomRotation) and aug.steps[0].degrees == 10
    assert isinstance(aug.steps[1], RandomCropFlip) and aug.steps[1].flip is False
    x, y = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32), np.arange(10)
    batches = [xb for xb, _ in DataLoader(x, y, 5, seed=1, augment=aug)]
    assert all(b.shape == (5, 1, 8, 8) for b in batches)
    assert main(["train", "--device", "cpu", "--limit-train", "200", "--model", "mlp", "--epochs", "1", "--augment",
                 "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["config"]["augment"] is True
    assert main(["train", "--device", "cpu", "--limit-train", "200", "--model", "mlp", "--epochs", "1",
                 "--dataset", "digits", "--no-augment", "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["config"]["augment"] is False
