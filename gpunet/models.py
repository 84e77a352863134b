"""Ready-made models: `build_model(name, in_shape, num_classes)`.

    cnn           (default) conv+ReLU -> batch-norm -> max-pool -> residual block -> [max-pool] -> dropout
                  -> linear
    lenet         LeNet-5 (conv 6 -> pool -> conv 16 -> pool -> 120 -> 84 -> classes), padded for small inputs,
                  with ReLU and max-pooling
    lenet5-classic  the same with 1998's tanh and average pooling
    vgg           VGG-style: blocks of two 3x3 conv+BN+ReLU and a 2x2 max-pool (16, 32, 64 channels; as many
                  blocks as the image size allows), then 128 -> classes
    alexnet       a small AlexNet: 5x5 conv -> ReLU -> local response norm -> max-pool, 3x3 conv -> ReLU ->
                  LRN -> max-pool, three 3x3 convs, max-pool, two dropout+linear(128) layers, classes
    inception     a stem conv and two Inception modules (1x1 | 1x1->3x3 | 1x1->two 3x3 | pool->1x1 branches,
                  concatenated) with a max-pool between, global average pooling, linear head
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

MODELS = ("cnn", "lenet", "lenet5-classic", "vgg", "alexnet", "inception", "resnet-small", "mlp")
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


def lenet(in_shape, num_classes: int, classic: bool = False) -> nn.Module:
    """LeNet-5's layout (LeCun et al. 1998): conv 5x5 (6) -> subsample -> conv 5x5 (16) -> subsample ->
    120 -> 84 -> classes. Where it departs from 1998: ReLU instead of the scaled tanh 1.7159 tanh(2x/3), max-
    pooling instead of the trainable average subsampling (coefficient and bias per map), C3 connected to all
    six maps instead of the paper's partial connection table, a softmax head trained by cross-entropy
    instead of the RBF units, and zero padding so that 28x28 and 8x8 inputs keep enough size (the paper padded
    MNIST to 32x32). `classic=True` (model `lenet5-classic`) restores the tanh (PyTorch's unscaled one) and
    average pooling; the other departures stay."""
    name = "lenet5-classic" if classic else "lenet"
    c, h, w = _check_shape(name, in_shape)
    pad1 = 2 if min(h, w) < 32 else 0         # 28x28 -> 28x28, as in the classic MNIST LeNet
    h1, w1 = (h + 2 * pad1 - 4) // 2, (w + 2 * pad1 - 4) // 2
    pad2 = 0 if min(h1, w1) >= 10 else 2      # tiny inputs (8x8 digits) keep their size instead of vanishing
    h2, w2 = (h1 + 2 * pad2 - 4) // 2, (w1 + 2 * pad2 - 4) // 2
    if min(h1, w1, h2, w2) < 1:
        raise ValueError(f"{name}: input {h}x{w} is too small")
    act, pool, conv_act, init = ((nn.Tanh, nn.AvgPool2d, None, "lecun_normal") if classic
                                 else (nn.ReLU, nn.MaxPool2d, "relu", "kaiming_normal"))
    features = [nn.Conv2d(c, 6, 5, padding=pad1, activation=conv_act, init=init), pool(2),
                nn.Conv2d(6, 16, 5, padding=pad2, activation=conv_act, init=init), pool(2)]
    if classic:
        features.insert(1, nn.Tanh())
        features.insert(4, nn.Tanh())
    return nn.Sequential(
        *features, nn.Flatten(), nn.Linear(16 * h2 * w2, 120, init=init), act(), nn.Linear(120, 84, init=init),
        act(), nn.Linear(84, num_classes, init=HEAD_INIT))


def lenet5_classic(in_shape, num_classes: int) -> nn.Module:
    return lenet(in_shape, num_classes, classic=True)


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> list:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg(in_shape, num_classes: int, widths=(16, 32, 64)) -> nn.Module:
    """VGG's idea at digits/CIFAR size: only 3x3 convolutions, two per block, each block halving the image
    with a 2x2 max-pool and doubling the channels; BatchNorm (which VGG predates) lets it train from scratch
    in a few epochs. Blocks stop when the image would shrink below 2x2 (8x8 digits: two blocks)."""
    c, h, w = _check_shape("vgg", in_shape)
    layers, cin = [], c
    for cout in widths:
        if min(h, w) < 4 and layers:
            break
        layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout) + [nn.MaxPool2d(2)]
        cin, h, w = cout, h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3), nn.Linear(cin * h * w, 128), nn.ReLU(),
                         nn.Linear(128, num_classes, init=HEAD_INIT))


def alexnet(in_shape, num_classes: int) -> nn.Module:
    """AlexNet's layout (Krizhevsky et al. 2012) scaled to small images: a large first kernel (5x5 here, 11x11
    there), ReLU, local response normalisation after the first two convolutions, overlapping 3x3 max-pools
    with stride 2, three 3x3 convolutions, and two dropout + fully connected layers (128 units, 4096 there).
    No BatchNorm, as in 2012."""
    c, h, w = _check_shape("alexnet", in_shape)
    if min(h, w) < 8:
        raise ValueError(f"alexnet: images must be at least 8x8, got {h}x{w}")
    pool = lambda: nn.MaxPool2d(3, stride=2, padding=1)  # overlapping; halves the size, rounding up
    lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # AlexNet n, alpha, beta; k 1 (PyTorch), not 2
    layers = [nn.Conv2d(c, 32, 5, padding=2, activation="relu"), lrn(), pool(),
              nn.Conv2d(32, 64, 3, padding=1, activation="relu"), lrn(), pool(),
              nn.Conv2d(64, 96, 3, padding=1, activation="relu"),
              nn.Conv2d(96, 96, 3, padding=1, activation="relu"),
              nn.Conv2d(96, 64, 3, padding=1, activation="relu")]
    h, w = (h + 3) // 4, (w + 3) // 4
    if min(h, w) >= 4:  # 28x28 and 32x32: a third pool, as AlexNet's after conv5
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        h, w = (h + 1) // 2, (w + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * h * w, 128), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, num_classes, init=HEAD_INIT))


def _inception(cin: int, c1: int, c3: tuple, c5: tuple, cp: int) -> nn.Module:
    """GoogLeNet's module: four branches on the same input, concatenated on channels: 1x1; 1x1 -> 3x3;
    1x1 -> two 3x3 (the 5x5 of the paper, factorised as in Inception v2); 3x3 max-pool (stride 1) -> 1x1."""
    return nn.Concat(
        nn.Sequential(*_conv_bn_relu(cin, c1, 1)),
        nn.Sequential(*_conv_bn_relu(cin, c3[0], 1), *_conv_bn_relu(c3[0], c3[1])),
        nn.Sequential(*_conv_bn_relu(cin, c5[0], 1), *_conv_bn_relu(c5[0], c5[1]), *_conv_bn_relu(c5[1], c5[1])),
        nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(cin, cp, 1)))


def inception(in_shape, num_classes: int) -> nn.Module:
    """A small GoogLeNet: a 3x3 stem (32 channels; with a max-pool first on images of 16x16 and up), an
    Inception module (-> 64 channels), a 2x2 max-pool, a second module (-> 120), global average pooling and
    a linear head, as GoogLeNet ends."""
    c, h, w = _check_shape("inception", in_shape)
    if min(h, w) < 4:
        raise ValueError(f"inception: images must be at least 4x4, got {h}x{w}")
    stem = _conv_bn_relu(c, 32) + ([nn.MaxPool2d(2)] if min(h, w) >= 16 else [])
    return nn.Sequential(*stem, _inception(32, 16, (16, 24), (8, 12), 12), nn.MaxPool2d(2),
                         _inception(64, 32, (32, 48), (12, 24), 16), nn.GlobalAvgPool2d(),
                         nn.Linear(120, num_classes, init=HEAD_INIT))


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


_BUILDERS = {"cnn": cnn, "lenet": lenet, "lenet5-classic": lenet5_classic, "vgg": vgg, "alexnet": alexnet,
             "inception": inception, "resnet-small": resnet_small, "mlp": mlp}


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
