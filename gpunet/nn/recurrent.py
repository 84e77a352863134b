"""Recurrent layers (RNN, GRU, LSTM) with PyTorch's weights and formulas, and two sequence adapters.

    rnn = nn.LSTM(input_size=8, hidden_size=64, num_layers=2)
    y = rnn(x)                      # x (N, T, F) batch-first -> y (N, T, H), the last layer's outputs
    rnn.h_n, rnn.c_n                # final states, (num_layers, N, H)
    dx = rnn.backward(dy)           # dy (N, T, H) -> dx (N, T, F): backpropagation through time

Layer l (l = 0 .. num_layers-1) holds `weight_ih_l{l}` (G*H, F_l), `weight_hh_l{l}` (G*H, H),
`bias_ih_l{l}` and `bias_hh_l{l}` (G*H,), with F_0 = input_size and F_l = H above; G = 1 (RNN),
3 (GRU, gate rows r, z, n) or 4 (LSTM, gate rows i, f, g, o). Names, shapes and formulas are
PyTorch's, so state dicts move between the libraries unchanged:

    RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)                 (nonlinearity="relu": relu)
    LSTM  i, f, g, o = sigma, sigma, tanh, sigma of (W_ih x + b_ih + W_hh h + b_hh), split in 4
          c' = f * c + i * g,   h' = o * tanh(c')
    GRU   r, z = sigma(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - z) * n + z * h

Every weight starts uniform in [-1/sqrt(H), 1/sqrt(H)] (PyTorch's default), drawn on the host from the
constructing backend's generator in state_dict order.

Computation. Time-major inside: the input projections W_ih x of all T steps are one matrix product
per layer, the recurrence loops over time only (vectorised over the batch), and backward forms the
weight gradients as one product over all (T * N) rows after the time loop. The same code runs on
every backend: it only uses `backend.xp`.

Gradients. `backward(dy, dh_n=None, dc_n=None)` takes dy for every output step. For a many-to-one
model pass zeros for all steps but the last (or put `LastStep()` after the layer, which does exactly
that); with only final-state gradients, dy is all zeros. dh_n/dc_n (num_layers, N, H) are
gradients w.r.t. the final states (default zero). The gradients w.r.t. h0/c0 are left in `dh0`/`dc0`.
Truncated BPTT: feed `h0=rnn.h_n` (and `c0=rnn.c_n`) of the previous chunk; there is no autograd
graph, so nothing flows back across chunks.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet import functional as F
from gpunet.nn.layers import _host_rng
from gpunet.nn.module import Module, Parameter

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _RNNBase(Module):
    _kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 backend=None, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"{name}: {what} must be a positive integer, got {v!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias = bool(bias)
        self.h_n = self.c_n = self.dh0 = self.dc0 = None
        g, h = _GATES[self._kind] * self.hidden_size, self.hidden_size
        rng, bound = _host_rng(backend), 1.0 / math.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            fan = self.input_size if layer == 0 else h
            shapes = [("weight_ih", (g, fan)), ("weight_hh", (g, h))]
            shapes += [("bias_ih", (g,)), ("bias_hh", (g,))] if self.bias else []
            for pname, shape in shapes:
                setattr(self, f"{pname}_l{layer}", Parameter(rng.uniform(-bound, bound, size=shape)))
        self.to(backend, dtype)

    def _weights(self, layer: int):
        p = self._parameters
        b_ih, b_hh = p.get(f"bias_ih_l{layer}"), p.get(f"bias_hh_l{layer}")
        return (p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"], b_ih, b_hh)

    # --- forward -----------------------------------------------------------------------------------

    def _check_state(self, s, what: str, n: int):
        name = type(self).__name__
        self._backend.check(s, f"{name} {what}")
        want = (self.num_layers, n, self.hidden_size)
        if tuple(s.shape) != want:
            raise ValueError(f"{name}: expected {what} of shape {want} (num_layers, N, hidden_size), "
                             f"got {tuple(s.shape)}")
        self._check_dtype(s, f"{name} {what}")

    def forward(self, x, h0=None, c0=None):
        be, xp, name = self._backend, self._backend.xp, type(self).__name__
        be.check(x, f"{name} input")
        if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name}: expected input of shape (N, T, {self.input_size}) with N, T >= 1 "
                             f"(batch-first), got {tuple(x.shape)}")
        self._check_dtype(x, name)
        if c0 is not None and self._kind != "LSTM":
            raise TypeError(f"{name}: c0 is only used by LSTM")
        n, lstm = x.shape[0], self._kind == "LSTM"
        state_shape = (self.num_layers, n, self.hidden_size)
        for s, what in ((h0, "h0"), (c0, "c0")):
            if s is not None:
                self._check_state(s, what, n)
        h0 = h0 if h0 is not None else xp.zeros(state_shape, x.dtype)
        c0 = c0 if c0 is not None or not lstm else xp.zeros(state_shape, x.dtype)
        seq = xp.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, F), time-major
        caches, h_n, c_n = [], [], []
        for layer in range(self.num_layers):
            cache = self._layer_forward(layer, seq, h0[layer], c0[layer] if lstm else None)
            caches.append(cache)
            hs = cache[1]
            seq = hs[1:]
            h_n.append(hs[-1])
            if lstm:
                c_n.append(cache[2][-1])
        self.h_n = xp.stack(h_n)
        self.c_n = xp.stack(c_n) if lstm else None
        self._save(caches)
        return xp.ascontiguousarray(seq.transpose(1, 0, 2))

    def _input_projection(self, layer, xs):
        """W_ih x + b_ih for all steps at once: (T, N, G*H)."""
        w_ih, _, b_ih, _ = self._weights(layer)
        xw = xs @ w_ih.data.T
        if b_ih is not None:
            xw += b_ih.data
        return xw

    def _hidden_projection(self, layer, h):
        _, w_hh, _, b_hh = self._weights(layer)
        hw = h @ w_hh.data.T
        if b_hh is not None:
            hw += b_hh.data
        return hw

    # --- backward ----------------------------------------------------------------------------------

    def backward(self, dy, dh_n=None, dc_n=None):
        """dy (N, T, H) -> dx (N, T, F); accumulates every weight gradient and leaves the gradients w.r.t.
        h0 (and c0) in `dh0` (`dc0`). See the module docstring."""
        (caches,) = self._take(dy)
        name, xp = type(self).__name__, self._backend.xp
        hs0 = caches[0][1]
        n, want = hs0.shape[1], (hs0.shape[1], hs0.shape[0] - 1, self.hidden_size)
        if tuple(dy.shape) != want:
            raise ValueError(f"{name}.backward: expected dy of shape {want} (N, T, hidden_size), got "
                             f"{tuple(dy.shape)}")
        dys = xp.ascontiguousarray(dy.transpose(1, 0, 2))
        final = []
        for s, what in ((dh_n, "dh_n"), (dc_n, "dc_n")):
            if s is not None:
                self._check_state(s, what, n)
            final.append(s)
        dh0, dc0 = [], []
        for layer in reversed(range(self.num_layers)):
            dhn = None if final[0] is None else final[0][layer]
            dcn = None if final[1] is None else final[1][layer]
            dys, dh, dc = self._layer_backward(layer, caches[layer], dys, dhn, dcn)
            dh0.append(dh)
            dc0.append(dc)
        self.dh0 = xp.stack(dh0[::-1])
        self.dc0 = xp.stack(dc0[::-1]) if self._kind == "LSTM" else None
        return xp.ascontiguousarray(dys.transpose(1, 0, 2))

    def _weight_grads(self, layer, xs, hs, dgx, dgh):
        """Accumulate the weight gradients from the pre-activation gradients of all steps, one product each,
        and return dx (T, N, F). dgx feeds W_ih/b_ih, dgh feeds W_hh/b_hh (the same array except in GRU)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(layer)
        g = dgx.shape[-1]
        gx, gh = dgx.reshape(-1, g), dgh.reshape(-1, g)
        for p, grad in ((w_ih, lambda: gx.T @ xs.reshape(-1, xs.shape[-1])),
                        (w_hh, lambda: gh.T @ hs[:-1].reshape(-1, hs.shape[-1])),
                        (b_ih, lambda: gx.sum(axis=0)), (b_hh, lambda: gh.sum(axis=0))):
            if p is not None and p.requires_grad:  # frozen weights cost nothing
                self._accumulate(p, grad())
        return dgx @ w_ih.data

    def _zero_state(self, dys, given):
        return self._backend.xp.zeros_like(dys[0]) if given is None else given

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        return s + ("" if self.bias else ", bias=False")


class RNN(_RNNBase):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu with nonlinearity="relu")."""
    _kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, backend=None, dtype=np.float32):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, backend, dtype)
        self.nonlinearity = nonlinearity

    def _layer_forward(self, layer, xs, h, c):
        xp = self._backend.xp
        xw = self._input_projection(layer, xs)
        hs = xp.empty((xs.shape[0] + 1,) + h.shape, dtype=xs.dtype)
        hs[0] = h
        act = xp.tanh if self.nonlinearity == "tanh" else F.relu
        for t in range(xs.shape[0]):
            hs[t + 1] = act(xw[t] + self._hidden_projection(layer, hs[t]))
        return xs, hs

    def _layer_backward(self, layer, cache, dys, dh_n, dc_n):
        xs, hs = cache
        w_hh = self._weights(layer)[1].data
        da_all = self._backend.xp.empty_like(dys)
        dh_next = self._zero_state(dys, dh_n)
        for t in reversed(range(dys.shape[0])):
            dh, h = dys[t] + dh_next, hs[t + 1]
            da = dh * (1 - h * h) if self.nonlinearity == "tanh" else F.relu_backward(dh, h)
            da_all[t] = da
            dh_next = da @ w_hh
        return self._weight_grads(layer, xs, hs, da_all, da_all), dh_next, None

    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(_RNNBase):
    """Long short-term memory, gate rows i, f, g, o (PyTorch's order). forward(x, h0=None, c0=None)."""
    _kind = "LSTM"

    def _layer_forward(self, layer, xs, h, c):
        xp, hid = self._backend.xp, self.hidden_size
        xw = self._input_projection(layer, xs)
        steps = xs.shape[0]
        hs = xp.empty((steps + 1,) + h.shape, dtype=xs.dtype)
        cs = xp.empty_like(hs)
        gates = xp.empty_like(xw)      # activated i, f, g, o
        tcs = xp.empty_like(hs[1:])    # tanh(c_t)
        hs[0], cs[0] = h, c
        for t in range(steps):
            z = xw[t] + self._hidden_projection(layer, hs[t])
            a = gates[t]
            a[...] = F.sigmoid(z)
            a[:, 2 * hid:3 * hid] = xp.tanh(z[:, 2 * hid:3 * hid])
            i, f, g, o = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:3 * hid], a[:, 3 * hid:]
            cs[t + 1] = f * cs[t] + i * g
            tcs[t] = xp.tanh(cs[t + 1])
            hs[t + 1] = o * tcs[t]
        return xs, hs, cs, gates, tcs

    def _layer_backward(self, layer, cache, dys, dh_n, dc_n):
        xs, hs, cs, gates, tcs = cache
        hid, w_hh = self.hidden_size, self._weights(layer)[1].data
        dg_all = self._backend.xp.empty_like(gates)
        dh_next, dc_next = self._zero_state(dys, dh_n), self._zero_state(dys, dc_n)
        for t in reversed(range(dys.shape[0])):
            a, tc = gates[t], tcs[t]
            i, f, g, o = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:3 * hid], a[:, 3 * hid:]
            dh = dys[t] + dh_next
            dc = dc_next + dh * o * (1 - tc * tc)
            d = dg_all[t]
            d[:, :hid] = dc * g * i * (1 - i)
            d[:, hid:2 * hid] = dc * cs[t] * f * (1 - f)
            d[:, 2 * hid:3 * hid] = dc * i * (1 - g * g)
            d[:, 3 * hid:] = dh * tc * o * (1 - o)
            dh_next = d @ w_hh
            dc_next = dc * f
        return self._weight_grads(layer, xs, hs, dg_all, dg_all), dh_next, dc_next


class GRU(_RNNBase):
    """Gated recurrent unit, gate rows r, z, n, with PyTorch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    _kind = "GRU"

    def _layer_forward(self, layer, xs, h, c):
        xp, hid = self._backend.xp, self.hidden_size
        xw = self._input_projection(layer, xs)
        steps = xs.shape[0]
        hs = xp.empty((steps + 1,) + h.shape, dtype=xs.dtype)
        gates = xp.empty_like(xw)      # activated r, z, n
        hns = xp.empty_like(hs[1:])    # W_hn h + b_hn, needed for dr
        hs[0] = h
        for t in range(steps):
            hw = self._hidden_projection(layer, hs[t])
            a = gates[t]
            a[:, :2 * hid] = F.sigmoid(xw[t, :, :2 * hid] + hw[:, :2 * hid])
            r, z = a[:, :hid], a[:, hid:2 * hid]
            hns[t] = hw[:, 2 * hid:]
            a[:, 2 * hid:] = xp.tanh(xw[t, :, 2 * hid:] + r * hns[t])
            n = a[:, 2 * hid:]
            hs[t + 1] = n + z * (hs[t] - n)
        return xs, hs, gates, hns

    def _layer_backward(self, layer, cache, dys, dh_n, dc_n):
        xs, hs, gates, hns = cache
        xp, hid, w_hh = self._backend.xp, self.hidden_size, self._weights(layer)[1].data
        dgx, dgh = xp.empty_like(gates), xp.empty_like(gates)
        dh_next = self._zero_state(dys, dh_n)
        for t in reversed(range(dys.shape[0])):
            a = gates[t]
            r, z, n = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:]
            dh = dys[t] + dh_next
            dn = dh * (1 - z) * (1 - n * n)               # through tanh: pre-activation of n
            gx, gh = dgx[t], dgh[t]
            gx[:, :hid] = dn * hns[t] * r * (1 - r)
            gx[:, hid:2 * hid] = dh * (hs[t] - n) * z * (1 - z)
            gx[:, 2 * hid:] = dn
            gh[:, :2 * hid] = gx[:, :2 * hid]
            gh[:, 2 * hid:] = dn * r
            dh_next = dh * z + gh @ w_hh
        return self._weight_grads(layer, xs, hs, dgx, dgh), dh_next, None


class LastStep(Module):
    """(N, T, H) -> (N, H): the last time step, for many-to-one models (`Sequential(LSTM, LastStep(), Linear)`).
    Backward puts dy at the last step and zeros elsewhere."""

    def forward(self, x):
        self._backend.check(x, "LastStep input")
        if x.ndim != 3 or x.shape[1] < 1:
            raise ValueError(f"LastStep: expected input of shape (N, T, H) with T >= 1, got {tuple(x.shape)}")
        self._save(x.shape)
        return x[:, -1].copy()

    def backward(self, dy):
        (x_shape,) = self._take(dy)
        dx = self._backend.xp.zeros(x_shape, dtype=dy.dtype)
        dx[:, -1] = dy
        return dx


class RowsAsSequence(Module):
    """(N, C, H, W) images -> (N, H, C*W) sequences: each row is one time step (row-by-row image RNNs)."""

    def forward(self, x):
        self._backend.check(x, "RowsAsSequence input")
        if x.ndim != 4:
            raise ValueError(f"RowsAsSequence: expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        self._save(x.shape)
        n, c, h, w = x.shape
        return self._backend.xp.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(n, h, c * w)

    def backward(self, dy):
        (x_shape,) = self._take(dy)
        n, c, h, w = x_shape
        return self._backend.xp.ascontiguousarray(dy.reshape(n, h, c, w).transpose(0, 2, 1, 3))
