"""Word vectors: skip-gram with negative sampling (Mikolov et al. 2013, the course notes' word2vec) on the
define-by-run autograd, nearest neighbours and analogies, and the word2vec text format.

    from gpunet import word2vec
    tokens = word2vec.tokenize(word2vec.python_docs_corpus())   # the Python reference text shipped with Python
    vocab = word2vec.Vocab.build(tokens, min_count=5)
    model = word2vec.SkipGramNS(len(vocab), dim=64)
    word2vec.train(model, vocab, tokens, epochs=5)             # Adam on the SGNS loss, loss.backward()
    kv = word2vec.KeyedVectors(vocab.words, model.vectors())
    kv.most_similar("list"); kv.analogy("int", "integer", "float")
    kv.save_word2vec_format("vectors.txt")                      # gensim's KeyedVectors.load_word2vec_format reads it
    glove = word2vec.GloVe(len(vocab), dim=64); word2vec.train_glove(glove, vocab, tokens)   # the second trainer

Objective, for a centre word c and a context word o seen within the window, with k words n_i drawn from the
unigram distribution raised to 3/4:

    loss = -log sigma(u_o . v_c) - sum_i log sigma(-u_{n_i} . v_c)

v (`in_embed.weight`) are the word vectors kept; u (`out_embed.weight`) the context vectors. Frequent words
are subsampled (kept with probability sqrt(t / f) + t / f, word2vec.c's rule) and the window is drawn per
centre word from 1..window (nearer words count more), as in the reference implementation.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from gpunet.atomic import atomic_write
from gpunet.autograd import Node, Tensor, array_module
from gpunet.nn.embedding import Embedding
from gpunet.nn.layers import _host_rng
from gpunet.nn.module import Module

_WORD = re.compile(r"[a-z][a-z0-9_]*(?:'[a-z]+)?")


def python_docs_corpus() -> str:
    """The Python language reference's topic texts that ship with every CPython (`pydoc_data.topics`, about
    460 kB of English): a real text corpus available offline."""
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


def tokenize(text: str) -> list[str]:
    """Lower-cased words: letters first, then letters, digits or underscores (identifiers stay whole)."""
    return _WORD.findall(text.lower())


class Vocab:
    """Words with at least `min_count` occurrences, most frequent first; `index[word]` -> id."""

    def __init__(self, words, counts):
        self.words, self.counts = list(words), np.asarray(counts, dtype=np.int64)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, tokens, min_count: int = 5) -> "Vocab":
        counts = Counter(tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not kept:
            raise ValueError(f"Vocab: no word occurs {min_count} times or more")
        return cls(kept, [counts[w] for w in kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens) -> np.ndarray:
        """Ids of the words in the vocabulary (others dropped, as word2vec does)."""
        return np.array([self.index[t] for t in tokens if t in self.index], dtype=np.int64)

    def noise_distribution(self, power: float = 0.75) -> np.ndarray:
        p = self.counts.astype(np.float64) ** power
        return p / p.sum()


def subsample(ids: np.ndarray, counts: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """Drop frequent words: keep each occurrence with probability min(1, sqrt(t / f) + t / f), f its frequency."""
    if t <= 0:
        return ids
    f = counts[ids] / counts.sum()
    keep = np.sqrt(t / f) + t / f
    return ids[rng.random(len(ids)) < keep]


def skipgram_pairs(ids: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) pairs: for each position a window b drawn from 1..window, the words at distance
    1..b on both sides."""
    n = len(ids)
    spans = rng.integers(1, window + 1, size=n)
    centres, contexts = [], []
    for d in range(1, window + 1):
        active = np.nonzero(spans >= d)[0]
        for sign in (-1, 1):
            pos = active + sign * d
            ok = (pos >= 0) & (pos < n)
            centres.append(ids[active[ok]])
            contexts.append(ids[pos[ok]])
    return np.concatenate(centres), np.concatenate(contexts)


class SkipGramNS(Module):
    """Two embedding tables: `in_embed` (the word vectors v) and `out_embed` (the context vectors u).
    forward(centres (B,), contexts (B,), negatives (B, k)) -> the mean SGNS loss over the batch."""

    def __init__(self, vocab_size: int, dim: int = 64, backend=None, dtype=np.float32):
        super().__init__()
        self.in_embed = Embedding(vocab_size, dim, backend=backend)
        self.out_embed = Embedding(vocab_size, dim, backend=backend)
        rng = _host_rng(backend)
        # word2vec.c: v ~ U(-0.5/dim, 0.5/dim), u = 0
        self.in_embed.weight.data = (rng.random((vocab_size, dim)) - 0.5) / dim
        self.out_embed.weight.data = np.zeros((vocab_size, dim))
        self.to(backend, dtype)

    def forward(self, centres, contexts, negatives):
        v = self.in_embed(centres)                                   # (B, D)
        u_pos = self.out_embed(contexts)                             # (B, D)
        u_neg = self.out_embed(negatives)                            # (B, k, D)
        b, d = v.shape
        pos = (v * u_pos).sum(axis=1)                                # (B,)
        neg = (u_neg @ v.reshape(b, d, 1)).reshape(b, negatives.shape[1])
        return -(_log_sigmoid(pos).sum() + _log_sigmoid(-neg).sum()) * (1.0 / b)

    def vectors(self) -> np.ndarray:
        """The word vectors (in_embed), on the host."""
        return self._backend.asnumpy(self.in_embed.weight.data)


class LogSigmoid(Node):
    """log sigma(x), computed stably as min(x, 0) - log(1 + exp(-|x|)); its derivative is 1 - sigma(x)."""

    def forward(self, a):
        xp = array_module(a)
        self.a = a
        return xp.minimum(a, 0) - xp.log1p(xp.exp(-xp.abs(a)))

    def backward(self, gy):
        xp = array_module(gy)
        return gy * (1 / (1 + xp.exp(self.a)))


def _log_sigmoid(x: Tensor) -> Tensor:
    return LogSigmoid()(x)


def train(model: SkipGramNS, vocab: Vocab, tokens, epochs: int = 5, window: int = 5, negatives: int = 5,
          batch_size: int = 1024, lr: float = 2e-3, subsample_t: float = 1e-3, seed: int = 0,
          log=print) -> list[float]:
    """Train with Adam; each epoch redraws the subsampling, windows and negatives. Returns the mean loss
    per epoch."""
    from gpunet import optim
    rng = np.random.default_rng(seed)
    be = model.backend
    ids = vocab.encode(tokens)
    noise = np.cumsum(vocab.noise_distribution())
    opt = optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(int(epochs)):
        c, o = skipgram_pairs(subsample(ids, vocab.counts, subsample_t, rng), window, rng)
        order = rng.permutation(len(c))
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            neg = np.minimum(np.searchsorted(noise, rng.random((len(idx), negatives))), len(vocab) - 1)
            opt.zero_grad()
            loss = model(*(Tensor(be.asarray(a), backend=be) for a in (c[idx], o[idx], neg.astype(np.int64))))
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            seen += len(idx)
        history.append(total / max(seen, 1))
        if log:
            log(f"epoch {epoch + 1}/{epochs}  pairs {seen}  SGNS loss {history[-1]:.4f}")
    return history


def cooccurrence(ids: np.ndarray, vocab_size: int, window: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GloVe's co-occurrence counts: each pair of words at distance d <= window adds 1/d, symmetrically.
    Returns the non-zero entries (rows i, columns j, values X_ij)."""
    x = np.zeros((vocab_size, vocab_size), np.float64)
    for d in range(1, window + 1):
        np.add.at(x, (ids[:-d], ids[d:]), 1.0 / d)
        np.add.at(x, (ids[d:], ids[:-d]), 1.0 / d)
    i, j = np.nonzero(x)
    return i.astype(np.int64), j.astype(np.int64), x[i, j]


class GloVe(Module):
    """GloVe (Pennington et al. 2014): word vectors w, context vectors w~, biases b, b~, fitted to the log
    co-occurrence counts by weighted least squares,

        J = sum_ij f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2,   f(x) = min(1, (x / x_max)^alpha)

    forward(i (B,), j (B,), x (B,)) -> J over the batch divided by B. `vectors()` returns w + w~, the paper's
    choice."""

    def __init__(self, vocab_size: int, dim: int = 64, x_max: float = 100.0, alpha: float = 0.75, backend=None,
                 dtype=np.float32):
        super().__init__()
        self.x_max, self.alpha = float(x_max), float(alpha)
        rng = _host_rng(backend)
        self.w = Embedding(vocab_size, dim, backend=backend)
        self.w_ctx = Embedding(vocab_size, dim, backend=backend)
        self.b = Embedding(vocab_size, 1, backend=backend)
        self.b_ctx = Embedding(vocab_size, 1, backend=backend)
        for e in (self.w, self.w_ctx):  # the reference code: U(-0.5/dim, 0.5/dim), biases too
            e.weight.data = (rng.random((vocab_size, dim)) - 0.5) / dim
        for e in (self.b, self.b_ctx):
            e.weight.data = (rng.random((vocab_size, 1)) - 0.5) / dim
        self.to(backend, dtype)

    def forward(self, i, j, x):
        xp = array_module(x.data)
        f = xp.minimum(1.0, (x.data / self.x_max) ** self.alpha).astype(x.dtype)
        b = i.shape[0]
        dot = (self.w(i) * self.w_ctx(j)).sum(axis=1) + self.b(i).reshape(b) + self.b_ctx(j).reshape(b)
        err = dot - Tensor(xp.log(x.data), backend=x._backend)
        return (Tensor(f, backend=x._backend) * err * err).sum() * (1.0 / b)

    def vectors(self) -> np.ndarray:
        return self._backend.asnumpy(self.w.weight.data + self.w_ctx.weight.data)


def train_glove(model: GloVe, vocab: Vocab, tokens, epochs: int = 20, window: int = 5, batch_size: int = 4096,
                lr: float = 0.01, seed: int = 0, log=print) -> list[float]:
    """Fit GloVe to the corpus's co-occurrence counts with Adam (the paper used AdaGrad); each epoch visits
    every non-zero X_ij once in a new order. Returns the mean loss per epoch."""
    from gpunet import optim
    rng = np.random.default_rng(seed)
    be = model.backend
    i, j, x = cooccurrence(vocab.encode(tokens), len(vocab), window)
    opt = optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(int(epochs)):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = model(Tensor(be.asarray(i[idx]), backend=be), Tensor(be.asarray(j[idx]), backend=be),
                         Tensor(be.asarray(x[idx].astype(model.w.weight.dtype)), backend=be))
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        history.append(total / len(x))
        if log:
            log(f"epoch {epoch + 1}/{epochs}  non-zero X_ij {len(x)}  GloVe loss {history[-1]:.4f}")
    return history


class UnknownWordError(ValueError, KeyError):
    """A query word that is not in the vocabulary (a KeyError, as in gensim, and a ValueError for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0])


class KeyedVectors:
    """Words and their vectors: cosine nearest neighbours, analogies, the word2vec text format."""

    def __init__(self, words, vectors):
        self.words = list(words)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors.shape[0] != len(self.words):
            raise ValueError(f"KeyedVectors: {len(self.words)} words but {self.vectors.shape[0]} vectors")
        self.index = {w: i for i, w in enumerate(self.words)}
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit = self.vectors / np.maximum(norms, 1e-12)

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self._id(word)]

    def _id(self, word: str) -> int:
        if word not in self.index:
            raise UnknownWordError(f"word {word!r} is not in the vocabulary ({len(self.words)} words)")
        return self.index[word]

    def similarity(self, a: str, b: str) -> float:
        return float(self._unit[self._id(a)] @ self._unit[self._id(b)])

    def most_similar(self, positive, negative=(), topn: int = 10) -> list[tuple[str, float]]:
        """Words nearest (cosine) to the mean of the unit vectors of `positive` minus those of `negative`
        (gensim's rule), the query words excluded."""
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        q = sum(self._unit[self._id(w)] for w in positive) - sum((self._unit[self._id(w)] for w in negative),
                                                                np.zeros(self.vectors.shape[1], np.float32))
        q = q / max(np.linalg.norm(q), 1e-12)
        sims = self._unit @ q
        for w in positive + negative:
            sims[self.index[w]] = -np.inf
        best = np.argsort(-sims)[:topn]
        return [(self.words[i], float(sims[i])) for i in best]

    def analogy(self, a: str, b: str, c: str, topn: int = 1):
        """a is to b as c is to ?: most_similar(positive=[b, c], negative=[a]) (3CosAdd)."""
        return self.most_similar([b, c], [a], topn)

    def save_word2vec_format(self, path) -> None:
        """The word2vec text format: a "count dim" line, then one "word v1 v2 ..." line per word."""
        lines = [f"{len(self.words)} {self.vectors.shape[1]}"]
        lines += [w + " " + " ".join(f"{x:.6g}" for x in v) for w, v in zip(self.words, self.vectors)]
        with atomic_write(Path(path)) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load_word2vec_format(cls, path) -> "KeyedVectors":
        with open(path, encoding="utf-8") as f:
            header = f.readline().split()
            count, dim = int(header[0]), int(header[1])
            words, vecs = [], np.empty((count, dim), np.float32)
            for i in range(count):
                parts = f.readline().rstrip("\n").split(" ")
                if len(parts) != dim + 1:
                    raise ValueError(f"{path}: line {i + 2} has {len(parts) - 1} numbers, expected {dim}")
                words.append(parts[0])
                vecs[i] = np.array(parts[1:], dtype=np.float32)
        return cls(words, vecs)
