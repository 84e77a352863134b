"""Attention: scaled dot-product (and PyTorch's `nn.MultiheadAttention`) and additive (Bahdanau) attention.

    attn = nn.MultiheadAttention(embed_dim=32, num_heads=4)          # batch_first=True (gpunet's layout)
    out, weights = attn(query, key, value, key_padding_mask=pad, attn_mask=causal)
    # query (N, L, E), key/value (N, S, E) -> out (N, L, E), weights (N, L, S) averaged over the heads

    bahdanau = nn.AdditiveAttention(query_size=64, key_size=128, hidden_size=64)
    context, weights = bahdanau(s, h, key_padding_mask=pad)          # s (N, Dq), h (N, S, Dk) -> (N, Dk), (N, S)

Scaled dot-product attention (Vaswani et al. 2017): softmax(Q K^T / sqrt(d) + mask) V, per head.
`MultiheadAttention` has PyTorch's parameters, names and shapes: `in_proj_weight` (3E, E) holding
W_q, W_k, W_v stacked in that order, `in_proj_bias` (3E,), `out_proj.weight` (E, E), `out_proj.bias`
(E,), and PyTorch's init (Xavier-uniform in_proj, zero biases), so a state dict moves to and from
`torch.nn.MultiheadAttention(E, heads)` unchanged. Masks follow PyTorch: `key_padding_mask` (N, S),
True where a key is padding; `attn_mask` (L, S) or (N * heads, L, S), boolean (True = not allowed) or
float (added to the scores); `is_causal=True` builds the (L, S) upper-triangular mask. A row whose keys
are all masked gives NaN, as in PyTorch. Dropout (p = `dropout`) acts on the attention weights in
training mode. Inputs are batch-first unless `batch_first=False` (PyTorch's default layout (L, N, E)).

Additive attention (Bahdanau et al. 2015), as the course notes draw it for an encoder-decoder:
e_j = v^T tanh(W_q s + W_k h_j), alpha = softmax(e) over the encoder steps j (padding excluded),
context = sum_j alpha_j h_j. Parameters `query_proj.weight` (A, Dq), `key_proj.weight` (A, Dk),
`key_proj.bias` (A,), `v.weight` (1, A).

Everything is written with tensor operations (matmul, reshape, the `Softmax` node), so gradients come
from the autograd and it runs on every backend.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet import init as initializers
from gpunet.autograd import Tensor
from gpunet.autograd import functions as N
from gpunet.nn.layers import Dropout, Linear, _host_rng
from gpunet.nn.module import Module, Parameter


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


def additive_mask(mask, backend, dtype, what: str):
    """A boolean mask (True = not allowed) or a float mask (added as is) -> a float array to add to scores."""
    xp = backend.xp
    m = _raw(mask)
    backend.check(m, what)
    if m.dtype == np.bool_:
        return xp.where(m, xp.asarray(-np.inf, dtype=dtype), xp.asarray(0, dtype=dtype))
    if m.dtype.kind != "f":
        raise TypeError(f"{what}: expected a boolean mask (True = masked) or a float mask, got dtype {m.dtype}")
    return m.astype(dtype, copy=False)


def scaled_dot_product_attention(q, k, v, mask=None, dropout=None):
    """softmax(q @ k^T / sqrt(d) + mask) @ v for Tensors q (..., L, d), k (..., S, d), v (..., S, dv); mask a
    float array broadcastable to (..., L, S) (-inf where not allowed). Returns (output, weights)."""
    scores = (q @ k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores + Tensor(mask, backend=q._backend)
    weights = N.Softmax(-1)(scores)
    used = dropout(weights) if dropout is not None else weights
    return used @ v, weights


class MultiheadAttention(Module):
    """PyTorch's `nn.MultiheadAttention(embed_dim, num_heads, dropout, bias)` with query, key and value of the
    same size E; forward returns (output, weights or None)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True, backend=None, dtype=np.float32):
        super().__init__()
        for what, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"MultiheadAttention: {what} must be a positive integer, got {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim, self.batch_first = self.embed_dim // self.num_heads, bool(batch_first)
        e, rng = self.embed_dim, _host_rng(backend)
        # PyTorch: xavier_uniform_ on the stacked (3E, E) matrix, zero in_proj and out_proj biases, and
        # out_proj's weight from Linear's kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(E), 1/sqrt(E))
        self.in_proj_weight = Parameter(initializers.xavier_uniform((3 * e, e), rng))
        self.in_proj_bias = Parameter(np.zeros(3 * e)) if bias else None
        self.out_proj = Linear(e, e, bias=bias, init=lambda shape, r: r.uniform(-1 / math.sqrt(e), 1 / math.sqrt(e),
                                                                                  size=shape),
                               backend=backend, dtype=dtype)
        self.attn_dropout = Dropout(dropout, backend=backend)
        self.dropout = float(dropout)
        self.to(backend, dtype)

    def _project(self, x, i: int):
        e = self.embed_dim
        w = self.in_proj_weight[i * e:(i + 1) * e]
        b = None if self.in_proj_bias is None else self.in_proj_bias[i * e:(i + 1) * e]
        n, t = x.shape[0], x.shape[1]
        flat = x.reshape(n * t, e)
        y = N.Linear()(flat, w, b) if b is not None else N.Linear()(flat, w)
        return y.reshape(n, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)  # (N, heads, T, d)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        be, e, h = self._backend, self.embed_dim, self.num_heads
        key = query if key is None else key
        value = key if value is None else value
        for what, x in (("query", query), ("key", key), ("value", value)):
            be.check(x.storage, f"MultiheadAttention {what}")
            if x.ndim != 3 or x.shape[2] != e:
                layout = "(N, T, E)" if self.batch_first else "(T, N, E)"
                raise ValueError(f"MultiheadAttention: expected {what} of shape {layout} with E = {e}, "
                                 f"got {tuple(x.shape)}")
            self._check_dtype(x, "MultiheadAttention")
        if not self.batch_first:
            query, key, value = (x.transpose(1, 0, 2) for x in (query, key, value))
        n, length, s = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[0] != n or value.shape[:2] != key.shape[:2]:
            raise ValueError(f"MultiheadAttention: key and value must have the query's batch size and the same "
                             f"length, got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                             f"value {tuple(value.shape)} (batch-first)")
        mask = self._mask(n, length, s, key_padding_mask, attn_mask, is_causal, query.dtype)
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        out, weights = scaled_dot_product_attention(q, k, v, mask, self.attn_dropout)
        out = self.out_proj(out.transpose(0, 2, 1, 3).reshape(n * length, e)).reshape(n, length, e)
        if not self.batch_first:
            out = out.transpose(1, 0, 2)
        if not need_weights:
            return out, None
        return out, (weights.mean(axis=1) if average_attn_weights else weights)

    def _mask(self, n, length, s, key_padding_mask, attn_mask, is_causal, dtype):
        be, xp, h = self._backend, self._backend.xp, self.num_heads
        mask = None
        if is_causal:
            if attn_mask is not None:
                raise ValueError("MultiheadAttention: give attn_mask or is_causal=True, not both")
            attn_mask = xp.triu(xp.ones((length, s), dtype=bool), k=1)
        if attn_mask is not None:
            m = additive_mask(attn_mask, be, dtype, "MultiheadAttention attn_mask")
            if m.shape == (length, s):
                mask = m.reshape(1, 1, length, s)
            elif m.shape == (n * h, length, s):
                mask = m.reshape(n, h, length, s)
            else:
                raise ValueError(f"MultiheadAttention: expected attn_mask of shape {(length, s)} or "
                                 f"{(n * h, length, s)} (L, S or N * num_heads, L, S), got {tuple(m.shape)}")
        if key_padding_mask is not None:
            m = additive_mask(key_padding_mask, be, dtype, "MultiheadAttention key_padding_mask")
            if m.shape != (n, s):
                raise ValueError(f"MultiheadAttention: expected key_padding_mask of shape {(n, s)} (N, S), "
                                 f"got {tuple(m.shape)}")
            m = m.reshape(n, 1, 1, s)
            mask = m if mask is None else mask + m
        return mask

    def extra_repr(self) -> str:
        s = f"{self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout:g}"
        if self.in_proj_bias is None:
            s += ", bias=False"
        return s + ("" if self.batch_first else ", batch_first=False")


class AdditiveAttention(Module):
    """Bahdanau attention: scores e_j = v^T tanh(W_q s + W_k h_j + b), weights softmax(e) over the keys
    (padding excluded), context sum_j alpha_j h_j. forward(query (N, Dq) or (N, L, Dq), keys (N, S, Dk),
    values=None (the keys), key_padding_mask=None (N, S), True = padding) -> (context, weights)."""

    def __init__(self, query_size: int, key_size: int, hidden_size: int, backend=None, dtype=np.float32):
        super().__init__()
        for what, v in (("query_size", query_size), ("key_size", key_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"AdditiveAttention: {what} must be a positive integer, got {v!r}")
        self.query_size, self.key_size, self.hidden_size = int(query_size), int(key_size), int(hidden_size)
        self.query_proj = Linear(query_size, hidden_size, bias=False, init="xavier_uniform", backend=backend)
        self.key_proj = Linear(key_size, hidden_size, init="xavier_uniform", backend=backend)
        self.v = Linear(hidden_size, 1, bias=False, init="xavier_uniform", backend=backend)
        self.to(backend, dtype)

    def keys(self, keys):
        """W_k h_j + b for all keys: computed once per source sequence and passed as `projected_keys` to every
        decoder step (the keys do not change while the decoder runs)."""
        return self.key_proj(keys)

    def forward(self, query, keys, values=None, key_padding_mask=None, projected_keys=None):
        be = self._backend
        values = keys if values is None else values
        for what, x in (("query", query), ("keys", keys), ("values", values)):
            be.check(x.storage, f"AdditiveAttention {what}")
        if keys.ndim != 3 or keys.shape[2] != self.key_size:
            raise ValueError(f"AdditiveAttention: expected keys of shape (N, S, {self.key_size}), "
                             f"got {tuple(keys.shape)}")
        if query.ndim not in (2, 3) or query.shape[-1] != self.query_size or query.shape[0] != keys.shape[0]:
            raise ValueError(f"AdditiveAttention: expected query of shape ({keys.shape[0]}, {self.query_size}) or "
                             f"({keys.shape[0]}, L, {self.query_size}), got {tuple(query.shape)}")
        if values.ndim != 3 or values.shape[:2] != keys.shape[:2]:
            raise ValueError(f"AdditiveAttention: expected values of shape ({keys.shape[0]}, {keys.shape[1]}, D), "
                             f"got {tuple(values.shape)}")
        single = query.ndim == 2
        q = query.reshape(query.shape[0], 1, self.query_size) if single else query
        n, length, s = q.shape[0], q.shape[1], keys.shape[1]
        pk = self.key_proj(keys) if projected_keys is None else projected_keys          # (N, S, A)
        pq = self.query_proj(q)                                                          # (N, L, A)
        a = self.hidden_size
        hidden = (pq.reshape(n, length, 1, a) + pk.reshape(n, 1, s, a)).tanh()          # (N, L, S, A)
        scores = self.v(hidden).reshape(n, length, s)
        if key_padding_mask is not None:
            m = additive_mask(key_padding_mask, be, scores.dtype, "AdditiveAttention key_padding_mask")
            if m.shape != (n, s):
                raise ValueError(f"AdditiveAttention: expected key_padding_mask of shape {(n, s)}, "
                                 f"got {tuple(m.shape)}")
            scores = scores + Tensor(m.reshape(n, 1, s), backend=be)
        weights = N.Softmax(-1)(scores)
        context = weights @ values                                                       # (N, L, Dv)
        if single:
            return context.reshape(n, values.shape[2]), weights.reshape(n, s)
        return context, weights

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, hidden_size={self.hidden_size}"
