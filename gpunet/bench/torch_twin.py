"""The PyTorch twin of a gpunet model: the same architecture as torch.nn modules, with identical weights.

    twin = torch_twin(model, torch)          # model: any gpunet.nn.Module tree built from the layers below

The twin is built by walking the gpunet module tree, one torch module per gpunet module under the
same attribute name, so `state_dict()` keys and shapes agree and `twin.load_state_dict(model.state_dict())`
copies every weight and running statistic. Following the tree (rather than writing the models again)
keeps the twin right when gpunet.models changes; a layer without a translation raises TypeError.
`torch` is passed in because it is an optional dependency imported by the caller.

Dropout layers replay gpunet's own masks (same Philox seed and counter stream, see gpunet.nn.Dropout),
so a twin in training mode computes exactly what the gpunet model computes. The masks are drawn on the
host; `use_torch_dropout(twin)` switches to PyTorch's native dropout, which a benchmark times once
the outputs have been compared.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np


def _classes(torch):
    """torch.nn modules with no stock equivalent: fused conv+ReLU, Residual, Concat, global average pool."""
    nn = torch.nn

    class Conv2dReLU(nn.Conv2d):
        """gpunet's Conv2d(activation="relu"): an nn.Conv2d (same parameter names) followed by ReLU."""

        def forward(self, x):
            return torch.relu(super().forward(x))

    class Residual(nn.Module):
        def __init__(self, body, shortcut, relu):
            super().__init__()
            self.body = body
            if shortcut is not None:
                self.shortcut = shortcut
            self.relu = relu

        def forward(self, x):
            y = self.body(x) + (self.shortcut(x) if hasattr(self, "shortcut") else x)
            return torch.relu(y) if self.relu else y

    class Concat(nn.Module):
        def __init__(self, branches):
            super().__init__()
            for i, m in enumerate(branches):
                self.add_module(str(i), m)

        def forward(self, x):
            return torch.cat([m(x) for m in self.children()], dim=1)

    class GlobalAvgPool2d(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class Dropout(nn.Module):
        """gpunet's inverted dropout with gpunet's masks (or torch's own once `same_masks` is False)."""

        def __init__(self, p, seed, counter):
            super().__init__()
            self.p, self.seed, self.counter = p, seed, counter
            self.same_masks = True

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            if not self.same_masks:
                return nn.functional.dropout(x, self.p, training=True)
            from gpunet.ops.numpy import dropout_mask
            mask = dropout_mask(tuple(x.shape), self.p, self.seed, self.counter, np.float32)
            self.counter += math.ceil(x.numel() / 4)  # gpunet.nn.Dropout's counter rule
            return x * torch.from_numpy(mask).to(device=x.device, dtype=x.dtype)

        def extra_repr(self):
            return f"p={self.p}, same_masks={self.same_masks}"

    return Conv2dReLU, Residual, Concat, GlobalAvgPool2d, Dropout


def _translate(m, torch, cls):
    from gpunet import nn as g
    tnn = torch.nn
    Conv2dReLU, Residual, Concat, GlobalAvgPool2d, Dropout = cls
    kind = type(m)
    if kind is g.Sequential:
        return tnn.Sequential(OrderedDict((name, _translate(c, torch, cls)) for name, c in m._modules.items()))
    if kind is g.Residual:
        shortcut = m._modules.get("shortcut")
        return Residual(_translate(m.body, torch, cls), None if shortcut is None else _translate(shortcut, torch, cls),
                        m.activation == "relu")
    if kind is g.Concat:
        return Concat([_translate(c, torch, cls) for c in m.children()])
    if kind is g.Conv2d:
        conv = Conv2dReLU if m.activation == "relu" else tnn.Conv2d
        return conv(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                    bias=m.bias is not None)
    if kind is g.Linear:
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if kind in (g.BatchNorm1d, g.BatchNorm2d):
        bn = tnn.BatchNorm2d if kind is g.BatchNorm2d else tnn.BatchNorm1d
        return bn(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)
    if kind is g.MaxPool2d:
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if kind is g.AvgPool2d:
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=True)
    if kind is g.GlobalAvgPool2d:
        return GlobalAvgPool2d()
    if kind is g.Flatten:
        return tnn.Flatten()
    if kind is g.Dropout:
        return Dropout(m.p, m.seed, m.counter)
    simple = {g.ReLU: tnn.ReLU, g.Sigmoid: tnn.Sigmoid, g.Tanh: tnn.Tanh, g.Identity: tnn.Identity}
    if kind in simple:
        return simple[kind]()
    if kind is g.LeakyReLU:
        return tnn.LeakyReLU(m.negative_slope)
    if kind is g.ELU:
        return tnn.ELU(m.alpha)
    if kind is g.PReLU:
        return tnn.PReLU(m.num_parameters)
    if kind is g.LocalResponseNorm:
        return tnn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)
    raise TypeError(f"torch_twin: no PyTorch translation for gpunet layer {kind.__name__}")


def torch_twin(model, torch, device="cpu"):
    """A torch.nn.Module with `model`'s architecture and a copy of its weights and buffers, on `device`,
    in float32 and in `model`'s train/eval mode."""
    twin = _translate(model, torch, _classes(torch))
    state = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.to(device=device, dtype=torch.float32).train(model.training)


def use_torch_dropout(twin) -> None:
    """Let the twin's dropout layers draw PyTorch's own masks (no host round trip) from now on."""
    for m in twin.modules():
        if hasattr(m, "same_masks"):
            m.same_masks = False
