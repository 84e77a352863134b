"""The layers' nodes: each forward calls the same `backend.ops` kernel or `gpunet.functional` math as the
layer always did, saves what its backward reads in the node, and its backward calls the matching
backward op. Modules in `gpunet.nn` only check arguments and call these.

Hot-op backwards take a C-contiguous gradient (`_c`): the CUDA launchers hand raw pointers to kernels.

Nodes with `keeps_layout` pass oneDNN Blocked activations through (gpunet.autograd.core, docs/onednn.md):
the conv asks for its output in oneDNN's layout, and batch norm, ReLU, max pool and the residual join run
on it in place when they get one.
"""
from __future__ import annotations

from gpunet import functional as F
from gpunet.autograd.core import Node, array_module
from gpunet.onednn.blocked import is_blocked, plain_of


def _c(g):
    return g if is_blocked(g) else array_module(g).ascontiguousarray(g)


class Conv2d(Node):
    """relu?(conv(x, w) + b) through `ops.conv2d_forward`; backward is `ops.conv2d_backward`, skipping dx's work
    when the input needs no gradient (the data batch). Inputs (x, w) or (x, w, b)."""

    keeps_layout = True

    def __init__(self, ops, stride, padding, relu: bool):
        self.ops, self.stride, self.padding, self.relu = ops, stride, padding, relu

    def forward(self, x, w, b=None):
        y, self.ctx = self.ops.conv2d_forward(x, w, b, self.stride, self.padding, self.relu, keep_layout=True)
        return y

    def backward(self, gy):
        dx, dw, db = self.ops.conv2d_backward(_c(gy), self.ctx, input_grad=self.needs(0))
        return (dx, dw) if len(self.inputs) == 2 else (dx, dw, db)


class Linear(Node):
    """x @ w.T + b (`functional.linear`); inputs (x, w) or (x, w, b)."""

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        return F.linear(x, w, b)

    def backward(self, gy):
        has_bias = len(self.inputs) == 3
        dx, dw, db = F.linear_backward(gy, self.x, self.w, has_bias, self.needs(0))
        return (dx, dw, db) if has_bias else (dx, dw)


class BatchNormTrain(Node):
    """Batch statistics (`ops.batch_norm_train`, which also updates the running buffers in place)."""

    keeps_layout = True

    def __init__(self, ops, running_mean, running_var, momentum, eps):
        self.ops, self.rm, self.rv, self.momentum, self.eps = ops, running_mean, running_var, momentum, eps

    def forward(self, x, gamma, beta):
        y, mean, invstd = self.ops.batch_norm_train(x, gamma, beta, self.rm, self.rv, self.momentum, self.eps)
        self.rm = self.rv = None
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        return y

    def backward(self, gy):
        return self.ops.batch_norm_backward(_c(gy), self.x, self.gamma, self.mean, self.invstd)


class BatchNormEval(Node):
    """Running statistics (`ops.batch_norm_eval`): an affine map per channel, differentiated directly (on
    NCHW arrays: training through frozen statistics is rare)."""

    keeps_layout = True

    def __init__(self, ops, running_mean, running_var, eps):
        self.ops, self.rm, self.rv, self.eps = ops, running_mean, running_var, eps

    def forward(self, x, gamma, beta):
        self.x, self.gamma = x, gamma
        return self.ops.batch_norm_eval(x, gamma, beta, self.rm, self.rv, self.eps)

    def backward(self, gy):
        gy, self.x = plain_of(gy), plain_of(self.x)
        xp = array_module(gy)
        view = (1, -1) + (1,) * (gy.ndim - 2)
        axes = tuple(a for a in range(gy.ndim) if a != 1)
        invstd = 1 / xp.sqrt(self.rv + self.eps)
        xhat = (self.x - self.rm.reshape(view)) * invstd.reshape(view)
        dx = gy * (self.gamma * invstd).reshape(view) if self.needs(0) else None
        return dx, (gy * xhat).sum(axis=axes), gy.sum(axis=axes)


class MaxPool2d(Node):
    keeps_layout = True

    def __init__(self, ops, kernel, stride, padding):
        self.ops, self.kernel, self.stride, self.padding = ops, kernel, stride, padding

    def forward(self, x):
        y, self.argmax = self.ops.max_pool2d_forward(x, self.kernel, self.stride, self.padding)
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        return self.ops.max_pool2d_backward(_c(gy), self.argmax, self.x_shape, self.kernel, self.stride,
                                            self.padding)


class AvgPool2d(Node):
    def __init__(self, ops, kernel, stride, padding):
        self.ops, self.kernel, self.stride, self.padding = ops, kernel, stride, padding

    def forward(self, x):
        self.x_shape = x.shape
        return self.ops.avg_pool2d_forward(x, self.kernel, self.stride, self.padding)

    def backward(self, gy):
        return self.ops.avg_pool2d_backward(_c(gy), self.x_shape, self.kernel, self.stride, self.padding)


class GlobalAvgPool2d(Node):
    """(N, C, H, W) -> (N, C) spatial mean; backward spreads dy / (H W) over each plane."""

    def forward(self, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        n, c, h, w = self.x_shape
        dx = array_module(gy).empty(self.x_shape, dtype=gy.dtype)
        dx[...] = (gy / (h * w))[:, :, None, None]
        return dx


class Dropout(Node):
    """x * mask with the mask from `functional.dropout` (the backend's counter-based stream)."""

    def __init__(self, p, seed, counter, backend):
        self.p, self.seed, self.counter, self.backend = p, seed, counter, backend

    def forward(self, x):
        y, self.mask = F.dropout(x, self.p, self.seed, self.counter, self.backend)
        self.backend = None
        return y

    def backward(self, gy):
        return F.dropout_backward(gy, self.mask)


class AddReLU(Node):
    """relu(a + b) in one buffer (the residual block's join); one oneDNN pass in a's or b's layout when either
    is a Blocked activation."""

    keeps_layout = True

    def forward(self, a, b):
        self.y = F.add_relu(a, b)
        return self.y

    def backward(self, gy):
        g = F.relu_backward(gy, self.y)
        return g, g


class LeakyReLU(Node):
    def __init__(self, slope):
        self.slope = slope

    def forward(self, x):
        self.x = x
        return F.leaky_relu(x, self.slope)

    def backward(self, gy):
        return F.leaky_relu_backward(gy, self.x, self.slope)


class PReLU(Node):
    def forward(self, x, w):
        self.x, self.w = x, w
        return F.prelu(x, w)

    def backward(self, gy):
        return F.prelu_backward(gy, self.x, self.w)


class ELU(Node):
    def __init__(self, alpha):
        self.alpha = alpha

    def forward(self, x):
        self.x, self.y = x, F.elu(x, self.alpha)
        return self.y

    def backward(self, gy):
        return F.elu_backward(gy, self.x, self.y, self.alpha)


class Embedding(Node):
    """weight[ids]; backward scatters dy into the looked-up rows (repeated ids add up). Inputs (weight, ids)."""

    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    def forward(self, w, ids):
        self.ids, self.w_shape = ids, w.shape
        return w[ids]

    def backward(self, gy):
        xp = array_module(gy)
        grad = xp.zeros(self.w_shape, dtype=gy.dtype)
        xp.add.at(grad, self.ids.reshape(-1), gy.reshape(-1, self.w_shape[1]))
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0
        return grad, None


# --- losses: the gradient dy of the 0-d loss scales the input gradient -------------------------------

class SoftmaxCrossEntropy(Node):
    def forward(self, logits, labels):
        self.log_probs, self.labels = F.log_softmax(logits, axis=1), labels
        return F.nll_loss(self.log_probs, labels)

    def backward(self, gy):
        return F.softmax_cross_entropy_backward(self.log_probs, self.labels, gy), None


class BCEWithLogits(Node):
    def forward(self, logits, targets):
        self.logits, self.targets = logits, targets
        return F.bce_with_logits(logits, targets)

    def backward(self, gy):
        d = F.bce_with_logits_backward(self.logits, self.targets, gy)
        return d, (-self.logits * (gy / self.logits.size) if self.needs(1) else None)


class MSELoss(Node):
    def forward(self, y, target):
        self.y, self.target = y, target
        return F.mse_loss(y, target)

    def backward(self, gy):
        d = F.mse_loss_backward(self.y, self.target, gy)
        return d, (-d if self.needs(1) else None)


class Softmax(Node):
    """softmax along `axis` (max subtracted first); backward y * (gy - sum(gy * y)). -inf entries (masked
    positions) get probability 0 and no gradient."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x):
        self.y = F.softmax(x, self.axis)
        return self.y

    def backward(self, gy):
        return F.softmax_backward(gy, self.y, self.axis)


class LogSoftmax(Node):
    """log softmax along `axis`; backward gy - softmax * sum(gy)."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x):
        self.y = F.log_softmax(x, self.axis)
        return self.y

    def backward(self, gy):
        return F.log_softmax_backward(gy, self.y, self.axis)
