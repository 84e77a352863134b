"""Many-to-many sequences: per-step losses with padding masks, variable-length batches, a time-distributed
wrapper, and an encoder-decoder (GRU encoder, GRU decoder, optional Bahdanau attention) with teacher forcing
and greedy decoding.

    mask = lengths_to_mask(lengths, T)                      # (N, T) True at real steps
    crit = nn.SequenceCrossEntropy(ignore_index=PAD)        # logits (N, T, C), targets (N, T) -> mean over real steps
    loss = crit(logits, targets)                            # or crit(logits, targets, mask=mask)
    h_last = last_valid(y, lengths)                         # (N, T, H) -> (N, H): each sequence's last real step

    model = nn.Seq2Seq(src_vocab, tgt_vocab, embed=32, hidden=128, attention=True, pad=0, bos=1, eos=2)
    logits = model(src, src_lengths, tgt_in)                # teacher forcing: tgt_in = [BOS, y_1 .. y_{T-1}]
    ids = model.greedy_decode(src, src_lengths, max_len)    # (N, max_len) array, PAD after each EOS

Variable lengths: batches are padded on the right. A unidirectional encoder's output at a real step does not
depend on the padding after it, so `last_valid` gives each sequence's true final state; attention masks
the padded encoder steps (`key_padding_mask`), and the loss ignores padded target steps.
"""
from __future__ import annotations

import numpy as np

from gpunet import functional as F
from gpunet.autograd import Node, Tensor, array_module, cat, no_grad
from gpunet.nn.attention import AdditiveAttention
from gpunet.nn.embedding import Embedding
from gpunet.nn.layers import Linear
from gpunet.nn.losses import _Loss
from gpunet.nn.module import Module
from gpunet.nn.recurrent import GRU


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


def lengths_to_mask(lengths, max_len: int | None = None, backend=None):
    """(N,) integer lengths -> (N, max_len) boolean mask, True at steps t < length (the real ones)."""
    lengths = _raw(lengths)
    xp = array_module(lengths) if backend is None else backend.xp
    lengths = xp.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths_to_mask: expected (N,) integer lengths, got {lengths.dtype} {lengths.shape}")
    t = int(lengths.max()) if max_len is None else int(max_len)
    return xp.arange(t)[None, :] < lengths[:, None]


def last_valid(y, lengths):
    """y (N, T, H) Tensor, lengths (N,) -> (N, H): y[n, lengths[n] - 1], each sequence's last real step.
    The gradient goes to those steps only."""
    lengths = _raw(lengths)
    xp = array_module(y.data)
    lengths = xp.asarray(lengths)
    if y.ndim != 3 or lengths.shape != (y.shape[0],):
        raise ValueError(f"last_valid: expected y (N, T, H) and lengths (N,), got {tuple(y.shape)} and "
                         f"{tuple(lengths.shape)}")
    return y[xp.arange(y.shape[0]), lengths - 1]


class _SeqCE(Node):
    """Mean over the selected steps of -log softmax(logits)[target]; inputs logits (N, T, C); the targets and
    the float mask (N, T) (1 at counted steps) are held by the node."""

    def __init__(self, targets, weights):
        self.targets, self.weights = targets, weights

    def forward(self, logits):
        xp = array_module(logits)
        self.log_probs = F.log_softmax(logits, axis=-1)
        self.onehot = (xp.arange(logits.shape[-1]) == self.targets[..., None]).astype(logits.dtype)
        picked = (self.log_probs * self.onehot).sum(axis=-1)
        self.count = max(float(self.weights.sum()), 1.0)
        return -(picked * self.weights).sum() / logits.dtype.type(self.count)

    def backward(self, gy):
        xp = array_module(gy)
        return (xp.exp(self.log_probs) - self.onehot) * (self.weights * (gy / self.count))[..., None]


class SequenceCrossEntropy(_Loss):
    """Cross-entropy at every step of (N, T, C) logits against (N, T) integer targets, averaged over the real
    steps: those whose target is not `ignore_index` and, when `mask` (N, T) is given, where it is True.
    As `torch.nn.CrossEntropyLoss(ignore_index=...)` on the flattened (N * T, C) logits."""

    def __init__(self, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def forward(self, logits, targets, mask=None):
        xp = array_module(logits.data)
        t, m = _raw(targets), _raw(mask)
        F._same_device(logits.data, t, "SequenceCrossEntropy targets")
        if logits.ndim != 3 or tuple(t.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"SequenceCrossEntropy: expected logits (N, T, C) and targets (N, T), got "
                             f"{tuple(logits.shape)} and {tuple(t.shape)}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"SequenceCrossEntropy: targets must be integers, got {t.dtype}")
        keep = xp.ones(t.shape, bool)
        if self.ignore_index is not None:
            keep &= t != self.ignore_index
        if m is not None:
            F._same_device(logits.data, m, "SequenceCrossEntropy mask")
            if tuple(m.shape) != tuple(t.shape):
                raise ValueError(f"SequenceCrossEntropy: expected mask of shape {tuple(t.shape)}, got {tuple(m.shape)}")
            keep &= m.astype(bool)
        safe = xp.where(keep, t, 0).astype(np.int64)
        c = logits.shape[2]
        if bool(((safe < 0) | (safe >= c)).any()):
            raise ValueError(f"SequenceCrossEntropy: targets at counted steps must lie in [0, {c})")
        return _SeqCE(safe, keep.astype(logits.dtype))(logits)

    def __repr__(self) -> str:
        return f"SequenceCrossEntropy(ignore_index={self.ignore_index})"


class TimeDistributed(Module):
    """Apply `module` to every step of (N, T, ...): the steps are folded into the batch, (N * T, ...), and
    unfolded after (Keras's TimeDistributed; `Linear` already maps the last axis of any input)."""

    def __init__(self, module: Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        if x.ndim < 3:
            raise ValueError(f"TimeDistributed: expected input of shape (N, T, ...), got {tuple(x.shape)}")
        n, t = x.shape[0], x.shape[1]
        y = self.module(x.reshape((n * t,) + tuple(x.shape[2:])))
        return y.reshape((n, t) + tuple(y.shape[1:]))


class Seq2Seq(Module):
    """Encoder-decoder for token sequences (Sutskever et al. 2014; Bahdanau et al. 2015 with attention).

    Encoder: Embedding -> GRU over the (right-padded) source; its state at each source's last real step
    starts the decoder. Decoder, one GRU step per output token:
        without attention: s_t = GRU(emb(y_{t-1}), s_{t-1});            logits_t = W_o s_t
        with attention:    c_t = AdditiveAttention(s_{t-1}, encoder outputs, padding masked)
                           s_t = GRU([emb(y_{t-1}); c_t], s_{t-1});     logits_t = W_o [s_t; c_t]
    Teacher forcing (`forward`): y_{t-1} is the true previous token. Greedy decoding (`greedy_decode`):
    the argmax of the previous step, until every sequence has produced EOS or max_len steps."""

    def __init__(self, src_vocab: int, tgt_vocab: int, embed: int = 32, hidden: int = 128, attention: bool = True,
                 pad: int = 0, bos: int = 1, eos: int = 2, backend=None, dtype=np.float32):
        super().__init__()
        self.pad, self.bos, self.eos = int(pad), int(bos), int(eos)
        self.hidden, self.attention = int(hidden), bool(attention)
        self.tgt_vocab = int(tgt_vocab)
        self.src_embed = Embedding(src_vocab, embed, padding_idx=pad, backend=backend)
        self.tgt_embed = Embedding(tgt_vocab, embed, padding_idx=pad, backend=backend)
        self.encoder = GRU(embed, hidden, backend=backend)
        self.decoder = GRU(embed + (hidden if attention else 0), hidden, backend=backend)
        self.attn = AdditiveAttention(hidden, hidden, hidden, backend=backend) if attention else None
        self.out = Linear(hidden * (2 if attention else 1), tgt_vocab, init="xavier_uniform", backend=backend)
        self.to(backend, dtype)

    def __call__(self, *args, **kwargs):  # always the Tensor API: ids in, a logits Tensor out
        return self.forward(*args, **kwargs)

    def encode(self, src, src_lengths):
        """-> (encoder outputs (N, S, H), the decoder's first state (N, H), padding mask (N, S), projected keys)."""
        be = self._backend
        src, lengths = be.asarray(_raw(src)), be.asarray(_raw(src_lengths))
        if src.ndim != 2 or lengths.shape != (src.shape[0],):
            raise ValueError(f"Seq2Seq: expected src (N, S) ids and src_lengths (N,), got {tuple(src.shape)} and "
                             f"{tuple(lengths.shape)}")
        enc = self.encoder(self.src_embed(Tensor(src, backend=be)))
        pad_mask = ~lengths_to_mask(lengths, src.shape[1])
        keys = self.attn.keys(enc) if self.attention else None
        return enc, last_valid(enc, lengths), pad_mask, keys

    def _step(self, prev_ids, state, memory):
        enc, pad_mask, keys = memory
        n = prev_ids.shape[0]
        inp = self.tgt_embed(Tensor(prev_ids, backend=self._backend))              # (N, E)
        if self.attention:
            ctx, alpha = self.attn(state, enc, key_padding_mask=pad_mask, projected_keys=keys)
            inp = cat([inp, ctx], axis=1)
        else:
            ctx = alpha = None
        y = self.decoder(inp.reshape(n, 1, inp.shape[1]), state.reshape(1, n, self.hidden))
        state = y.reshape(n, self.hidden)
        logits = self.out(cat([state, ctx], axis=1) if self.attention else state)
        return logits, state, alpha

    def forward(self, src, src_lengths, tgt_in):
        """Teacher forcing: tgt_in (N, T) = [BOS, y_1, ..., y_{T-1}] -> logits (N, T, tgt_vocab)."""
        be = self._backend
        tgt_in = be.asarray(_raw(tgt_in))
        enc, state, pad_mask, keys = self.encode(src, src_lengths)
        steps = []
        for t in range(tgt_in.shape[1]):
            logits, state, _ = self._step(tgt_in[:, t], state, (enc, pad_mask, keys))
            steps.append(logits.reshape(logits.shape[0], 1, self.tgt_vocab))
        return cat(steps, axis=1)

    def greedy_decode(self, src, src_lengths, max_len: int, return_attention: bool = False):
        """Feed back the argmax; -> (N, max_len) host array of ids, PAD after each sequence's EOS (and the
        (N, max_len, S) attention weights with return_attention=True)."""
        be = self._backend
        was = self.training
        self.eval()
        try:
            with no_grad():
                enc, state, pad_mask, keys = self.encode(src, src_lengths)
                n = enc.shape[0]
                prev = be.xp.full((n,), self.bos, dtype=np.int64)
                out, alphas = [], []
                done = be.xp.zeros((n,), bool)
                for _ in range(int(max_len)):
                    logits, state, alpha = self._step(prev, state, (enc, pad_mask, keys))
                    prev = logits.data.argmax(axis=1).astype(np.int64)
                    out.append(be.xp.where(done, self.pad, prev))
                    alphas.append(alpha.data if alpha is not None else None)
                    done = done | (prev == self.eos)
                    if bool(done.all()):
                        break
        finally:
            self.train(was)
        ids = be.asnumpy(be.xp.stack(out, axis=1))
        if ids.shape[1] < max_len:
            ids = np.concatenate([ids, np.full((n, max_len - ids.shape[1]), self.pad, ids.dtype)], axis=1)
        if return_attention:
            att = None if not self.attention else be.asnumpy(be.xp.stack(alphas, axis=1))
            return ids, att
        return ids

    def extra_repr(self) -> str:
        return f"attention={self.attention}, pad={self.pad}, bos={self.bos}, eos={self.eos}"
