"""Recurrent layers (RNN, GRU, LSTM) with PyTorch's weights and formulas, and two sequence adapters.

    rnn = nn.LSTM(input_size=8, hidden_size=64, num_layers=2)
    y = rnn(x)                      # x (N, T, F) batch-first Tensor -> y (N, T, H), the last layer's outputs
    rnn.h_n, rnn.c_n                # final states, (num_layers, N, H) Tensors (gradients flow through them too)
    loss.backward()                 # backpropagation through time, through y, h_n and c_n

Layer l (l = 0 .. num_layers-1) holds `weight_ih_l{l}` (G*H, F_l), `weight_hh_l{l}` (G*H, H),
`bias_ih_l{l}` and `bias_hh_l{l}` (G*H,), with F_0 = input_size and F_l = H above; G = 1 (RNN),
3 (GRU, gate rows r, z, n) or 4 (LSTM, gate rows i, f, g, o). Names, shapes and formulas are
PyTorch's, so state dicts move between the libraries unchanged:

    RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)                 (nonlinearity="relu": relu)
    LSTM  i, f, g, o = sigma, sigma, tanh, sigma of (W_ih x + b_ih + W_hh h + b_hh), split in 4
          c' = f * c + i * g,   h' = o * tanh(c')
    GRU   r, z = sigma(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - z) * n + z * h
          (reset_after=False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), Cho et al.'s GRU)

bidirectional=True (PyTorch's layout): each layer also runs over the time-reversed sequence with its own
`weight_ih_l{l}_reverse`, ... (listed after layer l's forward weights); y is (N, T, 2H), [forward |
reverse] at each step in time order, layer l + 1 reads those 2H features (F_l = 2H), and h_n/c_n (and
h0/c0) are (num_layers * 2, N, H) ordered l0, l0_reverse, l1, ... The reverse direction's final state is
its state after reading step 0.

Every weight starts uniform in [-1/sqrt(H), 1/sqrt(H)] (PyTorch's default), drawn on the host from the
constructing backend's generator in state_dict order.

Computation. One graph node per call (`Recurrence`), whose backward is backpropagation through time.
Time-major inside: the input projections W_ih x of all T steps are one matrix product per layer, the
recurrence loops over time only (vectorised over the batch), and backward forms the weight gradients as
one product over all (T * N) rows after the time loop. The same code runs on every backend: it only
uses `backend.xp`. A loop over time written by the user from `nn.Linear` cells works too (one node per
step), at the cost of T times more nodes.

Gradients reach x, h0, c0 and every weight from y, h_n and c_n. Truncated BPTT: feed
`h0=rnn.h_n.detach()` (and `c0=rnn.c_n.detach()`) of the previous chunk.

Array API (kept for code written before autograd): called on arrays, `y` and `h_n`/`c_n` are arrays and
`dx = rnn.backward(dy, dh_n=None, dc_n=None)` runs the same node, leaving the gradients w.r.t. h0/c0 in
`dh0`/`dc0`.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet import functional as F
from gpunet.autograd import Node, Tensor, array_module, as_tensor, concatenate
from gpunet.nn.layers import _host_rng
from gpunet.nn.module import Module, Parameter

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _RNNBase(Module):
    _kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 backend=None, dtype=np.float32, bidirectional: bool = False):
        super().__init__()
        name = type(self).__name__
        if not isinstance(bidirectional, bool):
            raise TypeError(f"{name}: bidirectional must be True or False, got {bidirectional!r}")
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"{name}: {what} must be a positive integer, got {v!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.bidirectional = bool(bias), bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.h_n = self.c_n = self.dh0 = self.dc0 = None
        g, h = _GATES[self._kind] * self.hidden_size, self.hidden_size
        rng, bound = _host_rng(backend), 1.0 / math.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            fan = self.input_size if layer == 0 else h * self.num_directions
            for suffix in self._suffixes():
                shapes = [("weight_ih", (g, fan)), ("weight_hh", (g, h))]
                shapes += [("bias_ih", (g,)), ("bias_hh", (g,))] if self.bias else []
                for pname, shape in shapes:
                    setattr(self, f"{pname}_l{layer}{suffix}", Parameter(rng.uniform(-bound, bound, size=shape)))
        self.to(backend, dtype)

    def _suffixes(self):
        return ("", "_reverse")[:self.num_directions]

    def _weights(self, layer: int, suffix: str = ""):
        p, key = self._parameters, f"l{layer}{suffix}"
        b_ih, b_hh = p.get(f"bias_ih_{key}"), p.get(f"bias_hh_{key}")
        return (p[f"weight_ih_{key}"], p[f"weight_hh_{key}"], b_ih, b_hh)

    # --- forward -----------------------------------------------------------------------------------

    def _check_state(self, s, what: str, n: int):
        name = type(self).__name__
        self._backend.check(s, f"{name} {what}")
        want = (self.num_layers * self.num_directions, n, self.hidden_size)
        if tuple(s.shape) != want:
            where = "num_layers * 2" if self.bidirectional else "num_layers"
            raise ValueError(f"{name}: expected {what} of shape {want} ({where}, N, hidden_size), "
                             f"got {tuple(s.shape)}")
        self._check_dtype(s, f"{name} {what}")

    def forward(self, x, h0=None, c0=None):
        be, xp, name = self._backend, self._backend.xp, type(self).__name__
        be.check(x.storage, f"{name} input")
        if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name}: expected input of shape (N, T, {self.input_size}) with N, T >= 1 "
                             f"(batch-first), got {tuple(x.shape)}")
        self._check_dtype(x, name)
        if c0 is not None and self._kind != "LSTM":
            raise TypeError(f"{name}: c0 is only used by LSTM")
        n, lstm = x.shape[0], self._kind == "LSTM"
        state_shape = (self.num_layers * self.num_directions, n, self.hidden_size)
        states = []
        for s, what in ((h0, "h0"), (c0, "c0"))[:2 if lstm else 1]:
            if s is not None:
                self._check_state(s.data if isinstance(s, Tensor) else s, what, n)
            states.append(as_tensor(s) if s is not None else Tensor(xp.zeros(state_shape, x.dtype), backend=be))
        weights = [w for layer in range(self.num_layers) for suffix in self._suffixes()
                   for w in self._weights(layer, suffix) if w is not None]
        outs = Recurrence(self)(x, *states, *weights)
        self.h_n = outs[1]
        self.c_n = outs[2] if lstm else None
        return outs[0]

    def _arrays_out(self, out) -> None:
        if not isinstance(self.h_n, Tensor):
            return
        self.__dict__["_state_tensors"] = (self.h_n, self.c_n)
        self.h_n = self.h_n.data
        self.c_n = None if self.c_n is None else self.c_n.data

    def _call_arrays(self, args, kwargs):
        # explicit zero states, so the array API's backward leaves dh0 (and dc0) even when none were given
        if self.training and args and hasattr(args[0], "shape"):
            lstm, xp = self._kind == "LSTM", self._backend.xp
            given = len(args)
            args = list(args) + [None] * (3 - len(args))
            shape = (self.num_layers * self.num_directions, args[0].shape[0], self.hidden_size)
            for i, key in ((1, "h0"), (2, "c0"))[:2 if lstm else 1]:
                if args[i] is None and kwargs.get(key) is None:
                    kwargs.pop(key, None)
                    args[i] = xp.zeros(shape, args[0].dtype)
            args = args[:max(given, 3 if lstm else 2)]
        return super()._call_arrays(tuple(args), kwargs)

    def _array_roots(self, out, extra):
        h_n, c_n = self._state_tensors
        roots = [out, h_n] + ([c_n] if c_n is not None else [])
        grads = list(extra)[:len(roots) - 1]
        return roots, grads + [None] * (len(roots) - 1 - len(grads))

    def backward(self, dy, dh_n=None, dc_n=None):
        """Array API: dy (N, T, H) -> dx (N, T, F); leaves the gradients w.r.t. h0 (and c0) in `dh0` (`dc0`)."""
        if self._cache is not None:
            for s, what in ((dh_n, "dh_n"), (dc_n, "dc_n")):
                if s is not None:
                    self._check_state(s, what, self._cache[0][0].shape[0])
            if tuple(dy.shape) != self._cache[2].shape:
                raise ValueError(f"{type(self).__name__}.backward: expected dy of shape {self._cache[2].shape} "
                                 f"(N, T, {'2 * ' if self.bidirectional else ''}hidden_size), "
                                 f"got {tuple(dy.shape)}")
        ins = self._run_array_backward(dy, (dh_n, dc_n), input_grad=True)
        xp = self._backend.xp
        grads = [t.grad if t.grad is not None else xp.zeros(t.shape, t.dtype) for t in ins[1:]]
        self.dh0 = grads[0]
        self.dc0 = grads[1] if self._kind == "LSTM" else None
        return ins[0].grad

    # --- the node's work: forward and backpropagation through time of one layer ----------------------

    @staticmethod
    def _projection(xs, w, b):
        """xs @ w.T + b (W_ih x + b_ih for all steps at once, or W_hh h + b_hh for one)."""
        xw = xs @ w.T
        if b is not None:
            xw += b
        return xw

    @staticmethod
    def _weight_grads(ws, needs, xs, hs, dgx, dgh):
        """Gradients of (w_ih, w_hh, b_ih, b_hh) from the pre-activation gradients of all steps, one product
        each (None where not needed), and dx (T, N, F). dgx feeds W_ih/b_ih, dgh feeds W_hh/b_hh."""
        g = dgx.shape[-1]
        gx, gh = dgx.reshape(-1, g), dgh.reshape(-1, g)
        grads = (lambda: gx.T @ xs.reshape(-1, xs.shape[-1]), lambda: gh.T @ hs[:-1].reshape(-1, hs.shape[-1]),
                 lambda: gx.sum(axis=0), lambda: gh.sum(axis=0))
        return [f() if need else None for f, need in zip(grads, needs)], dgx @ ws[0]

    def _zero_state(self, dys, given):
        return self._backend.xp.zeros_like(dys[0]) if given is None else given

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        return s + ("" if self.bias else ", bias=False") + (", bidirectional=True" if self.bidirectional else "")


class Recurrence(Node):
    """A whole recurrent module's call as one node: inputs (x, h0[, c0], weights in state_dict order), outputs
    (y, h_n[, c_n]). Forward runs each layer's time loop (the module's `_layer_forward`); backward runs
    backpropagation through time layer by layer (`_layer_backward`), the caches living in this node.

    Bidirectional: layer l runs twice, unit k = 2 l (forward in time) and k = 2 l + 1 (the `_reverse`
    weights, on the time-reversed sequence); their outputs, put back in time order, are concatenated on the
    feature axis ([forward | reverse], PyTorch's layout) and feed layer l + 1. h_n[k] is unit k's last state:
    for the reverse unit, its state after reading step 0."""

    def __init__(self, module: "_RNNBase"):
        self.m = module  # the layer code and sizes; nothing is saved on the module

    def _split(self, rest):
        m = self.m
        nstate, per = (2 if m._kind == "LSTM" else 1), (4 if m.bias else 2)
        flat = rest[nstate:]
        ws = [tuple(flat[i * per:(i + 1) * per]) + ((None, None) if not m.bias else ())
              for i in range(m.num_layers * m.num_directions)]
        return rest[:nstate], ws, per

    def forward(self, x, *rest):
        m, xp = self.m, array_module(x)
        (h0, *c0), ws, _ = self._split(rest)
        lstm = bool(c0)
        seq = xp.ascontiguousarray(x.transpose(1, 0, 2))  # (T, N, F), time-major
        self.caches, h_n, c_n, nd = [], [], [], m.num_directions
        for layer in range(m.num_layers):
            outs = []
            for d in range(nd):
                k = layer * nd + d
                inp = seq if d == 0 else xp.ascontiguousarray(seq[::-1])
                cache = m._layer_forward(ws[k], inp, h0[k], c0[0][k] if lstm else None)
                self.caches.append(cache)
                hs = cache[1]
                outs.append(hs[1:] if d == 0 else hs[:0:-1])
                h_n.append(hs[-1])
                if lstm:
                    c_n.append(cache[2][-1])
            seq = outs[0] if nd == 1 else xp.concatenate(outs, axis=2)
        self.ws, self.dtype = ws, x.dtype
        self.y_shape = (x.shape[0],) + tuple(seq.shape[0:1]) + tuple(seq.shape[2:])
        y = xp.ascontiguousarray(seq.transpose(1, 0, 2))
        return (y, xp.stack(h_n)) + ((xp.stack(c_n),) if lstm else ())

    def backward(self, dy, dh_n, dc_n=None):
        m = self.m
        xp = array_module(next(g for g in (dy, dh_n, dc_n) if g is not None))
        lstm = m._kind == "LSTM"
        nstate, per = (2 if lstm else 1), (4 if m.bias else 2)
        dys = xp.zeros((self.y_shape[1], self.y_shape[0], self.y_shape[2]), self.dtype) if dy is None \
            else xp.ascontiguousarray(dy.transpose(1, 0, 2))
        nd, hid = m.num_directions, m.hidden_size
        dh0, dc0, wgrads = [], [], []
        for layer in reversed(range(m.num_layers)):
            dx = None
            for d in reversed(range(nd)):
                k = layer * nd + d
                base = 1 + nstate + k * per
                needs = [self.needs(base + j) for j in range(per)] + [False] * (4 - per)
                dyk = dys if nd == 1 else dys[:, :, d * hid:(d + 1) * hid]
                dyk = xp.ascontiguousarray(dyk if d == 0 else dyk[::-1])
                dxk, dh, dc, wg = m._layer_backward(self.ws[k], needs, self.caches[k], dyk,
                                                    None if dh_n is None else dh_n[k],
                                                    None if dc_n is None else dc_n[k])
                dxk = dxk if d == 0 else dxk[::-1]
                dx = dxk if dx is None else dx + dxk
                dh0.append(dh)
                dc0.append(dc)
                wgrads[:0] = wg[:per]
            dys = dx
        states = [xp.stack(dh0[::-1])] + ([xp.stack(dc0[::-1])] if lstm else [])
        return (xp.ascontiguousarray(dys.transpose(1, 0, 2)), *states, *wgrads)


class RNN(_RNNBase):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu with nonlinearity="relu")."""
    _kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, backend=None, dtype=np.float32, bidirectional: bool = False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, backend, dtype, bidirectional)
        self.nonlinearity = nonlinearity

    def _layer_forward(self, ws, xs, h, c):
        xp = self._backend.xp
        xw = self._projection(xs, ws[0], ws[2])
        hs = xp.empty((xs.shape[0] + 1,) + h.shape, dtype=xs.dtype)
        hs[0] = h
        act = xp.tanh if self.nonlinearity == "tanh" else F.relu
        for t in range(xs.shape[0]):
            hs[t + 1] = act(xw[t] + self._projection(hs[t], ws[1], ws[3]))
        return xs, hs

    def _layer_backward(self, ws, needs, cache, dys, dh_n, dc_n):
        xs, hs = cache
        w_hh = ws[1]
        da_all = self._backend.xp.empty_like(dys)
        dh_next = self._zero_state(dys, dh_n)
        for t in reversed(range(dys.shape[0])):
            dh, h = dys[t] + dh_next, hs[t + 1]
            da = dh * (1 - h * h) if self.nonlinearity == "tanh" else F.relu_backward(dh, h)
            da_all[t] = da
            dh_next = da @ w_hh
        wg, dx = self._weight_grads(ws, needs, xs, hs, da_all, da_all)
        return dx, dh_next, None, wg

    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(_RNNBase):
    """Long short-term memory, gate rows i, f, g, o (PyTorch's order). forward(x, h0=None, c0=None)."""
    _kind = "LSTM"

    def _layer_forward(self, ws, xs, h, c):
        xp, hid = self._backend.xp, self.hidden_size
        xw = self._projection(xs, ws[0], ws[2])
        steps = xs.shape[0]
        hs = xp.empty((steps + 1,) + h.shape, dtype=xs.dtype)
        cs = xp.empty_like(hs)
        gates = xp.empty_like(xw)      # activated i, f, g, o
        tcs = xp.empty_like(hs[1:])    # tanh(c_t)
        hs[0], cs[0] = h, c
        for t in range(steps):
            z = xw[t] + self._projection(hs[t], ws[1], ws[3])
            a = gates[t]
            a[...] = F.sigmoid(z)
            a[:, 2 * hid:3 * hid] = xp.tanh(z[:, 2 * hid:3 * hid])
            i, f, g, o = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:3 * hid], a[:, 3 * hid:]
            cs[t + 1] = f * cs[t] + i * g
            tcs[t] = xp.tanh(cs[t + 1])
            hs[t + 1] = o * tcs[t]
        return xs, hs, cs, gates, tcs

    def _layer_backward(self, ws, needs, cache, dys, dh_n, dc_n):
        xs, hs, cs, gates, tcs = cache
        hid, w_hh = self.hidden_size, ws[1]
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
        wg, dx = self._weight_grads(ws, needs, xs, hs, dg_all, dg_all)
        return dx, dh_next, dc_next, wg


class GRU(_RNNBase):
    """Gated recurrent unit, gate rows r, z, n; h' = (1 - z) * n + z * h. Where the reset gate acts:

        reset_after=True  (default; PyTorch, cuDNN, Keras's default)  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        reset_after=False (Cho et al. 2014, as the course notes teach) n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)

    The first lets all three recurrent products W_h{r,z,n} h run as one matrix product per step; the second
    needs r before W_hn, so two. Same parameters either way (a state dict loads into both), different
    functions: weights trained with one do not carry their meaning to the other."""
    _kind = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 reset_after: bool = True, backend=None, dtype=np.float32, bidirectional: bool = False):
        if not isinstance(reset_after, bool):
            raise TypeError(f"GRU: reset_after must be True or False, got {reset_after!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, backend, dtype, bidirectional)
        self.reset_after = reset_after

    def _layer_forward(self, ws, xs, h, c):
        xp, hid = self._backend.xp, self.hidden_size
        xw = self._projection(xs, ws[0], ws[2])
        steps = xs.shape[0]
        hs = xp.empty((steps + 1,) + h.shape, dtype=xs.dtype)
        gates = xp.empty_like(xw)      # activated r, z, n
        # reset_after: W_hn h + b_hn, needed for dr; else r * h, needed for dr and W_hn's gradient
        saved = xp.empty_like(hs[1:])
        hs[0] = h
        w_hh, b_hh = ws[1], ws[3]
        for t in range(steps):
            a = gates[t]
            if self.reset_after:
                hw = self._projection(hs[t], w_hh, b_hh)
                a[:, :2 * hid] = F.sigmoid(xw[t, :, :2 * hid] + hw[:, :2 * hid])
                saved[t] = hw[:, 2 * hid:]
                a[:, 2 * hid:] = xp.tanh(xw[t, :, 2 * hid:] + a[:, :hid] * saved[t])
            else:
                hw = self._projection(hs[t], w_hh[:2 * hid], None if b_hh is None else b_hh[:2 * hid])
                a[:, :2 * hid] = F.sigmoid(xw[t, :, :2 * hid] + hw)
                saved[t] = a[:, :hid] * hs[t]
                a[:, 2 * hid:] = xp.tanh(xw[t, :, 2 * hid:] + self._projection(
                    saved[t], w_hh[2 * hid:], None if b_hh is None else b_hh[2 * hid:]))
            z, n = a[:, hid:2 * hid], a[:, 2 * hid:]
            hs[t + 1] = n + z * (hs[t] - n)
        return xs, hs, gates, saved

    def _layer_backward(self, ws, needs, cache, dys, dh_n, dc_n):
        xs, hs, gates, saved = cache
        xp, hid, w_hh = self._backend.xp, self.hidden_size, ws[1]
        dgx, dgh = xp.empty_like(gates), xp.empty_like(gates)
        dh_next = self._zero_state(dys, dh_n)
        for t in reversed(range(dys.shape[0])):
            a = gates[t]
            r, z, n = a[:, :hid], a[:, hid:2 * hid], a[:, 2 * hid:]
            dh = dys[t] + dh_next
            dn = dh * (1 - z) * (1 - n * n)               # through tanh: pre-activation of n
            gx, gh = dgx[t], dgh[t]
            gx[:, hid:2 * hid] = dh * (hs[t] - n) * z * (1 - z)
            gx[:, 2 * hid:] = dn
            if self.reset_after:
                gx[:, :hid] = dn * saved[t] * r * (1 - r)
                gh[:, :2 * hid] = gx[:, :2 * hid]
                gh[:, 2 * hid:] = dn * r
                dh_next = dh * z + gh @ w_hh
            else:
                drh = dn @ w_hh[2 * hid:]                 # gradient w.r.t. r * h
                gx[:, :hid] = drh * hs[t] * r * (1 - r)
                gh[...] = gx
                dh_next = dh * z + drh * r + gh[:, :2 * hid] @ w_hh[:2 * hid]
        wg, dx = self._weight_grads(ws, needs, xs, hs, dgx, dgh)
        if not self.reset_after and needs[1]:             # W_hn multiplies r * h, not h
            g = dgh.shape[-1]
            wg[1][2 * hid:] = dgh[..., 2 * hid:].reshape(-1, g - 2 * hid).T @ saved.reshape(-1, hid)
        return dx, dh_next, None, wg

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class LastStep(Module):
    """(N, T, H) -> (N, H): the last time step, for many-to-one models (`Sequential(LSTM, LastStep(), Linear)`).
    Its gradient is dy at the last step and zeros elsewhere.

    `LastStep(bidirectional=True)` after a bidirectional layer's (N, T, 2H) output: the forward half at the
    last step and the reverse half at step 0, i.e. each direction's final state after reading the whole
    sequence (PyTorch users' `cat([h_n[-2], h_n[-1]])`). Plain `LastStep()` there would take the reverse
    direction after one step only."""

    def __init__(self, bidirectional: bool = False):
        super().__init__()
        if not isinstance(bidirectional, bool):
            raise TypeError(f"LastStep: bidirectional must be True or False, got {bidirectional!r}")
        self.bidirectional = bidirectional

    def forward(self, x):
        self._backend.check(x.storage, "LastStep input")
        if x.ndim != 3 or x.shape[1] < 1:
            raise ValueError(f"LastStep: expected input of shape (N, T, H) with T >= 1, got {tuple(x.shape)}")
        if not self.bidirectional:
            return x[:, -1]
        if x.shape[2] % 2:
            raise ValueError(f"LastStep(bidirectional=True): expected (N, T, 2 * H) features, got {tuple(x.shape)}")
        h = x.shape[2] // 2
        return concatenate([x[:, -1, :h], x[:, 0, h:]], axis=1)

    def extra_repr(self) -> str:
        return "bidirectional=True" if self.bidirectional else ""


class RowsAsSequence(Module):
    """(N, C, H, W) images -> (N, H, C*W) sequences: each row is one time step (row-by-row image RNNs)."""

    def forward(self, x):
        self._backend.check(x.storage, "RowsAsSequence input")
        if x.ndim != 4:
            raise ValueError(f"RowsAsSequence: expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        return x.transpose(0, 2, 1, 3).reshape(n, h, c * w)
