"""Ready-made models: `build_model(name, in_shape, num_classes)`.

    cnn           (default) conv+ReLU -> batch-norm -> max-pool -> residual block -> [max-pool] -> dropout
                  -> linear
    lenet         LeNet-5 (conv 6 -> pool -> conv 16 -> pool -> 120 -> 84 -> classes), padded for small inputs
    resnet-small  a 3x3 stem and three basic residual blocks (16, 32, 64 channels; stride 2 between), with
                  batch-norm, global average pooling and a linear head
    mlp           flatten -> 256 -> 128 -> classes with ReLU and dropout

Weights are drawn on the host from the NumPy backend's generator, so `seed` (when given) fixes them on
every device; the model is then moved with `.to(backend)`. Hidden layers use He init (ReLU); every
classifier head uses `head_normal`, so a fresh model's loss is ~log(num_classes) (gpunet.sanity).
"""
from __future__ import annotations

from gpunet import nn
from gpunet.backend import get_backend

MODELS = ("cnn", "lenet", "resnet-small", "mlp")
HEAD_INIT = "head_normal"


def _check_shape(name: str, in_shape) -> tuple[int, int, int]:
    if len(in_shape) != 3 or min(int(s) for s in in_shape) < 1:
        raise ValueError(f"{name}: expected in_shape (C, H, W), got {tuple(in_shape)}")
    return tuple(int(s) for s in in_shape)


def cnn(in_shape, num_classes: int, width: int | None = None, dropout: float = 0.3) -> nn.Module:
    """The default model: conv+ReLU -> batch-norm -> max-pool -> residual block -> [max-pool] -> dropout ->
    linear. `width` (channels) defaults to 64 for images up to 16x16 (the 8x8 digits, `gpunet train`:
    97.2-98.9% test accuracy over seeds 0-4 with the head_normal head, measured 2026-12-02; when this was
    chosen, 32 channels and a He head gave 97.2-98.1%) and to 32 for larger ones, where 64 would cost 4x."""
    c, h, w = _check_shape("cnn", in_shape)
    if h < 2 or w < 2:
        raise ValueError(f"cnn: images must be at least 2x2, got {h}x{w}")
    if width is None:
        width = 64 if max(h, w) <= 16 else 32
    body = nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, bias=False, activation="relu"), nn.BatchNorm2d(width),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
    layers = [nn.Conv2d(c, width, 3, padding=1, activation="relu"), nn.BatchNorm2d(width), nn.MaxPool2d(2),
              nn.Residual(body, activation="relu")]
    h, w = h // 2, w // 2
    if min(h, w) >= 8:  # 28x28 and 32x32 inputs: pool once more before the linear head
        layers.append(nn.MaxPool2d(2))
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * h * w, num_classes, init=HEAD_INIT)]
    return nn.Sequential(*layers)


def lenet(in_shape, num_classes: int) -> nn.Module:
    c, h, w = _check_shape("lenet", in_shape)
    pad1 = 2 if min(h, w) < 32 else 0         # 28x28 -> 28x28, as in the classic MNIST LeNet
    h1, w1 = (h + 2 * pad1 - 4) // 2, (w + 2 * pad1 - 4) // 2
    pad2 = 0 if min(h1, w1) >= 10 else 2      # tiny inputs (8x8 digits) keep their size instead of vanishing
    h2, w2 = (h1 + 2 * pad2 - 4) // 2, (w1 + 2 * pad2 - 4) // 2
    if min(h1, w1, h2, w2) < 1:
        raise ValueError(f"lenet: input {h}x{w} is too small")
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad1, activation="relu"), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2, activation="relu"), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * h2 * w2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes, init=HEAD_INIT))


def _basic_block(cin: int, cout: int, stride: int) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Residual(body, shortcut, activation="relu")


def resnet_small(in_shape, num_classes: int, widths=(16, 32, 64)) -> nn.Module:
    c, _, _ = _check_shape("resnet-small", in_shape)
    layers = [nn.Conv2d(c, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, cout in enumerate(widths):
        layers.append(_basic_block(cin, cout, 1 if i == 0 else 2))
        cin = cout
    layers += [nn.GlobalAvgPool2d(), nn.Linear(cin, num_classes, init=HEAD_INIT)]
    return nn.Sequential(*layers)


def mlp(in_shape, num_classes: int, hidden=(256, 128), dropout: float = 0.1) -> nn.Module:
    c, h, w = _check_shape("mlp", in_shape)
    layers, d = [nn.Flatten()], c * h * w
    for width in hidden:
        layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
        d = width
    layers.append(nn.Linear(d, num_classes, init=HEAD_INIT))
    return nn.Sequential(*layers)


_BUILDERS = {"cnn": cnn, "lenet": lenet, "resnet-small": resnet_small, "mlp": mlp}


def build_model(name: str = "cnn", in_shape=(1, 28, 28), num_classes: int = 10, seed: int | None = None,
                backend=None) -> nn.Module:
    """Build model `name` (see MODELS) for inputs (C, H, W). `seed` reseeds the host generator that draws
    the weights; `backend` moves the model there (default: stays on NumPy)."""
    key = str(name).lower().replace("_", "-")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if int(num_classes) < 2:
        raise ValueError(f"{key}: num_classes must be >= 2, got {num_classes}")
    if seed is not None:
        get_backend("numpy").seed(seed)
    model = _BUILDERS[key](tuple(in_shape), int(num_classes))
    return model.to(backend) if backend is not None else model
