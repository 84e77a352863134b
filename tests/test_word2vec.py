"""Skip-gram with negative sampling: the loss and its gradients against torch, the sampling pieces, queries,
the word2vec text format, a small corpus learnt, every backend, and the CLI."""
import numpy as np
import pytest

import gpunet
from gpunet import word2vec as w2v
from gpunet.cli.main import main
from gpunet.gradcheck import gradcheck

torch = pytest.importorskip("torch")


def test_sgns_loss_and_gradients_match_torch(rng):
    m = w2v.SkipGramNS(7, 4, dtype=np.float64)
    m.in_embed.weight.data[...] = rng.standard_normal((7, 4))
    m.out_embed.weight.data[...] = rng.standard_normal((7, 4))
    c, o = np.array([0, 3, 3, 6, 2]), np.array([1, 2, 2, 0, 2])
    neg = rng.integers(0, 7, size=(5, 3))
    loss = m(*(gpunet.tensor(a) for a in (c, o, neg)))
    loss.backward()
    v = torch.from_numpy(m.in_embed.weight.data.copy()).requires_grad_(True)
    u = torch.from_numpy(m.out_embed.weight.data.copy()).requires_grad_(True)
    tc, to, tn = (torch.from_numpy(a) for a in (c, o, neg))
    pos = (v[tc] * u[to]).sum(1)
    negs = (u[tn] * v[tc][:, None, :]).sum(2)
    ref = -(torch.nn.functional.logsigmoid(pos).sum() + torch.nn.functional.logsigmoid(-negs).sum()) / 5
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(m.in_embed.weight.grad, v.grad.numpy(), atol=1e-12)   # repeated ids add up
    np.testing.assert_allclose(m.out_embed.weight.grad, u.grad.numpy(), atol=1e-12)


def test_log_sigmoid_is_stable_and_gradchecks(rng):
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    y = w2v.LogSigmoid()(gpunet.tensor(x)).data
    np.testing.assert_allclose(y, torch.nn.functional.logsigmoid(torch.from_numpy(x)).numpy(), rtol=1e-12)
    assert gradcheck(lambda t: w2v.LogSigmoid()(t), rng.standard_normal(6)).ok


def test_sgns_every_backend_matches_numpy(backend, rng):
    ref, m = w2v.SkipGramNS(9, 5), w2v.SkipGramNS(9, 5, backend=backend)
    ref.out_embed.weight.data[...] = rng.standard_normal((9, 5)).astype(np.float32)
    m.load_state_dict(ref.state_dict())
    c, o, neg = np.array([1, 2, 8]), np.array([3, 3, 0]), rng.integers(0, 9, size=(3, 4))
    a = ref(*(gpunet.tensor(x) for x in (c, o, neg)))
    b = m(*(gpunet.tensor(backend.asarray(x), backend=backend) for x in (c, o, neg)))
    a.backward()
    b.backward()
    np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
    for p, q in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(backend.asnumpy(p.grad), q.grad, rtol=1e-4, atol=1e-6)


def test_vocab_tokenize_subsample_pairs_and_noise():
    toks = w2v.tokenize("The list's items: a list, a tuple; __init__ and x2 LIST.")
    assert toks == ["the", "list's", "items", "a", "list", "a", "tuple", "init__", "and", "x2", "list"]
    vocab = w2v.Vocab.build(["b", "a", "a", "c", "a", "b"], min_count=2)
    assert vocab.words == ["a", "b"] and list(vocab.counts) == [3, 2]
    np.testing.assert_array_equal(vocab.encode(["c", "b", "a"]), [1, 0])
    np.testing.assert_allclose(vocab.noise_distribution(), np.array([3, 2]) ** 0.75 / (3 ** 0.75 + 2 ** 0.75))
    with pytest.raises(ValueError, match="no word occurs 5 times"):
        w2v.Vocab.build(["a"], 5)
    rng = np.random.default_rng(0)
    ids = np.arange(50)
    c, o = w2v.skipgram_pairs(ids, 3, rng)
    assert (np.abs(c - o) >= 1).all() and (np.abs(c - o) <= 3).all()
    assert len(c) > 2 * 50 and len(c) < 6 * 50
    counts = np.array([10000, 10])
    kept = w2v.subsample(np.array([0] * 10000 + [1] * 10), counts, 1e-3, rng)
    assert (kept == 1).sum() == 10 and (kept == 0).sum() < 1000  # frequent words thinned, rare ones kept


def test_keyed_vectors_queries_and_the_word2vec_text_format(tmp_path):
    words = ["king", "queen", "man", "woman", "apple"]
    vecs = np.array([[1, 1, 0], [1, -1, 0], [0, 1, 0.1], [0, -1, 0.1], [0, 0, 1]], np.float32)
    kv = w2v.KeyedVectors(words, vecs)
    assert kv.analogy("man", "king", "woman")[0][0] == "queen"   # king - man + woman
    near = kv.most_similar("king", topn=4)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    want = sorted(range(1, 5), key=lambda i: -unit[0] @ unit[i])
    assert [w for w, _ in near] == [words[i] for i in want]
    assert kv.similarity("king", "king") == pytest.approx(1.0)
    with pytest.raises(KeyError, match="'pear' is not in the vocabulary"):
        kv["pear"]
    path = tmp_path / "v.txt"
    kv.save_word2vec_format(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "5 3" and lines[1].split()[0] == "king" and len(lines) == 6
    np.testing.assert_allclose(np.loadtxt(path, skiprows=1, usecols=(1, 2, 3)), vecs, rtol=1e-6)  # NumPy reads it
    back = w2v.KeyedVectors.load_word2vec_format(path)
    assert back.words == words
    np.testing.assert_allclose(back.vectors, vecs, rtol=1e-6)


def _topic_corpus(rng, n=6000):
    """Two topics whose words only co-occur within their topic: sentences of 6 words from one topic."""
    topics = [["cat", "dog", "mouse", "horse", "cow"], ["red", "green", "blue", "pink", "grey"]]
    out = []
    for _ in range(n // 6):
        out += list(rng.choice(topics[rng.integers(2)], 6))
    return out


def test_skipgram_learns_which_words_share_contexts():
    rng = np.random.default_rng(0)
    tokens = _topic_corpus(rng)
    vocab = w2v.Vocab.build(tokens, 1)
    gpunet.get_backend("numpy").seed(0)
    model = w2v.SkipGramNS(len(vocab), 8)
    history = w2v.train(model, vocab, tokens, epochs=3, window=2, batch_size=256, lr=1e-2, subsample_t=0, log=None)
    assert history[-1] < history[0]
    kv = w2v.KeyedVectors(vocab.words, model.vectors())
    for w in ("cat", "blue"):
        same = {"cat", "dog", "mouse", "horse", "cow"} if w == "cat" else {"red", "green", "blue", "pink", "grey"}
        assert {x for x, _ in kv.most_similar(w, topn=4)} == same - {w}


def test_python_docs_corpus_is_offline_text():
    text = w2v.python_docs_corpus()
    tokens = w2v.tokenize(text)
    assert len(tokens) > 50_000 and "tuple" in set(tokens)


def test_cli_trains_queries_and_saves(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(_topic_corpus(np.random.default_rng(1), 3000)))
    out = tmp_path / "vec.txt"
    assert main(["word2vec", "--device", "cpu", "--corpus", str(corpus), "--min-count", "1", "--dim", "8",
                 "--epochs", "2", "--window", "2", "--lr", "1e-2", "--neighbours", "cat",
                 "--analogy", "cat", "dog", "red", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("cat: ") and "cat : dog :: red : " in printed
    assert out.read_text().splitlines()[0] == "10 8"
    assert main(["word2vec", "--load", str(out), "--neighbours", "dog"]) == 0
    assert capsys.readouterr().out.startswith("dog: ")
    assert main(["word2vec", "--load", str(out), "--neighbours", "pear"]) == 1
    assert "'pear' is not in the vocabulary" in capsys.readouterr().err


def test_glove_cooccurrence_loss_and_gradients_match_torch(rng):
    i, j, x = w2v.cooccurrence(np.array([0, 1, 2, 0]), 3, window=2)
    dense = np.zeros((3, 3))
    dense[i, j] = x
    np.testing.assert_allclose(dense, [[0, 1 + 1 / 2, 1 / 2 + 1], [1 + 1 / 2, 0, 1], [1 / 2 + 1, 1, 0]])
    m = w2v.GloVe(5, 3, x_max=2.0, dtype=np.float64)
    for p in m.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    ii, jj, xx = np.array([0, 1, 1, 4]), np.array([2, 3, 3, 0]), np.array([0.5, 1.0, 7.0, 2.0])
    loss = m(gpunet.tensor(ii), gpunet.tensor(jj), gpunet.tensor(xx))
    loss.backward()
    p = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in m.state_dict().items()}
    ti, tj, tx = torch.from_numpy(ii), torch.from_numpy(jj), torch.from_numpy(xx)
    f = torch.clamp((tx / 2.0) ** 0.75, max=1.0)
    err = (p["w.weight"][ti] * p["w_ctx.weight"][tj]).sum(1) + p["b.weight"][ti, 0] + p["b_ctx.weight"][tj, 0] \
        - torch.log(tx)
    ref = (f * err ** 2).sum() / 4
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    for name, prm in m.named_parameters():
        np.testing.assert_allclose(prm.grad, p[name].grad.numpy(), atol=1e-12, err_msg=name)


def test_glove_learns_which_words_share_contexts(tmp_path, capsys):
    tokens = _topic_corpus(np.random.default_rng(0))
    vocab = w2v.Vocab.build(tokens, 1)
    gpunet.get_backend("numpy").seed(0)
    model = w2v.GloVe(len(vocab), 8, x_max=10.0)
    history = w2v.train_glove(model, vocab, tokens, epochs=30, window=2, batch_size=16, lr=0.05, log=None)
    assert history[-1] < history[0]
    kv = w2v.KeyedVectors(vocab.words, model.vectors())
    assert {x for x, _ in kv.most_similar("cat", topn=4)} == {"dog", "mouse", "horse", "cow"}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(tokens))
    assert main(["word2vec", "--method", "glove", "--device", "cpu", "--corpus", str(corpus), "--min-count", "1",
                 "--dim", "8", "--epochs", "2", "--neighbours", "cat"]) == 0
    assert capsys.readouterr().out.startswith("cat: ")


@pytest.mark.slow
def test_python_docs_vectors_know_their_neighbours():
    """The documented run (docs/curriculum.md): 5 epochs on the Python reference."""
    tokens = w2v.tokenize(w2v.python_docs_corpus())
    vocab = w2v.Vocab.build(tokens, 5)
    gpunet.get_backend("numpy").seed(0)
    model = w2v.SkipGramNS(len(vocab), 64)
    w2v.train(model, vocab, tokens, epochs=5, log=None)
    kv = w2v.KeyedVectors(vocab.words, model.vectors())
    assert "tuple" in {w for w, _ in kv.most_similar("list", topn=10)}
    assert "false" in {w for w, _ in kv.most_similar("true", topn=10)}


def test_gensim_reads_the_saved_vectors(tmp_path):
    gensim = pytest.importorskip("gensim")
    kv = w2v.KeyedVectors(["a", "b", "c"], np.array([[1, 0], [0.5, 0.5], [0, 1]], np.float32))
    kv.save_word2vec_format(tmp_path / "v.txt")
    theirs = gensim.models.KeyedVectors.load_word2vec_format(str(tmp_path / "v.txt"), binary=False)
    assert theirs.index_to_key == ["a", "b", "c"]
    assert theirs.most_similar("a", topn=1)[0][0] == kv.most_similar("a", topn=1)[0][0] == "b"
