"""Many-to-many pieces: the time-distributed Linear, the masked per-step cross-entropy, variable-length masks,
and the encoder-decoder with teacher forcing and greedy decoding."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.gradcheck import gradcheck

torch = pytest.importorskip("torch")


def test_linear_maps_the_last_axis_of_a_sequence_like_torch(rng, backend):
    """Time-distributed: the same weights at every step, PyTorch's nn.Linear on (N, T, F)."""
    ours = nn.Linear(4, 3, dtype=np.float64)
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    t = gpunet.tensor(x, requires_grad=True)
    y = ours(t)
    (y * gpunet.tensor(dy)).sum().backward()
    tl = torch.nn.Linear(4, 3).double()
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tl(tx)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y.data, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, tl.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.bias.grad, tl.bias.grad.numpy(), atol=1e-12)
    ref, m = nn.Linear(4, 3), nn.Linear(4, 3, backend=backend)
    m.load_state_dict(ref.state_dict())
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(backend.asnumpy(m(backend.asarray(x32))), ref(x32), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Linear: expected input of shape \(N, 4\), got \(2, 5, 3\)"):
        ours(np.zeros((2, 5, 3)))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_sequence_cross_entropy_matches_torch_ignore_index(rng, dtype, tol):
    logits = rng.standard_normal((3, 5, 7)).astype(dtype)
    targets = rng.integers(1, 7, size=(3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0  # padding, ignored
    t = gpunet.tensor(logits, requires_grad=True)
    loss = nn.SequenceCrossEntropy(ignore_index=0)(t, targets)
    (loss * 2.5).backward()
    tl = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(tl.reshape(-1, 7), torch.from_numpy(targets).reshape(-1), ignore_index=0)
    (ref * 2.5).backward()
    assert loss.dtype == dtype
    np.testing.assert_allclose(float(loss), ref.item(), rtol=tol)
    np.testing.assert_allclose(t.grad, tl.grad.numpy(), rtol=tol, atol=tol)
    assert not t.grad[2, 1:].any()


def test_sequence_cross_entropy_with_a_mask_and_lengths(rng, backend):
    """mask=lengths_to_mask(lengths) counts the same steps as ignore_index on padded targets; every backend."""
    logits = rng.standard_normal((4, 6, 5)).astype(np.float32)
    lengths = np.array([6, 1, 3, 4])
    mask = nn.lengths_to_mask(lengths, 6)
    np.testing.assert_array_equal(mask.sum(axis=1), lengths)
    targets = rng.integers(0, 5, size=(4, 6))
    a = nn.SequenceCrossEntropy()(gpunet.tensor(logits), targets, mask=mask)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -(np.take_along_axis(lp, targets[..., None], -1)[..., 0] * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(a), want, rtol=1e-5)
    padded = np.where(mask, targets, -1)  # the same steps by ignore_index
    np.testing.assert_allclose(float(nn.SequenceCrossEntropy(ignore_index=-1)(gpunet.tensor(logits), padded)), want,
                               rtol=1e-5)
    x = gpunet.tensor(backend.asarray(logits), requires_grad=True, backend=backend)
    loss = nn.SequenceCrossEntropy()(x, backend.asarray(targets), mask=nn.lengths_to_mask(backend.asarray(lengths), 6))
    loss.backward()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    t = gpunet.tensor(logits, requires_grad=True)
    nn.SequenceCrossEntropy()(t, targets, mask=mask).backward()
    np.testing.assert_allclose(backend.asnumpy(x.grad), t.grad, rtol=1e-5, atol=1e-7)
    assert gradcheck(lambda z: nn.SequenceCrossEntropy()(z, targets, mask=mask), logits.astype(np.float64)).ok


def test_last_valid_and_time_distributed(rng):
    gru = nn.GRU(3, 4, dtype=np.float64)
    x = rng.standard_normal((3, 5, 3))
    lengths = np.array([5, 2, 3])
    h = nn.last_valid(gru(gpunet.tensor(x)), lengths)
    for i, n in enumerate(lengths):  # the padding after a sequence does not reach its last real state
        gru(gpunet.tensor(x[i:i + 1, :n]))
        np.testing.assert_allclose(h.data[i], gru.h_n.data[0, 0], atol=1e-12)
    assert gradcheck(lambda y: nn.last_valid(y, lengths), rng.standard_normal((3, 5, 2))).ok
    td = nn.TimeDistributed(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    y = td(gpunet.tensor(x.astype(np.float32)))
    assert y.shape == (3, 5, 4)
    np.testing.assert_allclose(y.data[1, 2], td.module(x[1:2, 2].astype(np.float32))[0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"TimeDistributed: expected input of shape \(N, T, ...\)"):
        td(gpunet.tensor(np.zeros((2, 3), np.float32)))


@pytest.mark.parametrize("attention", [False, True])
def test_seq2seq_teacher_forcing_matches_its_greedy_decoding_and_gradchecks(rng, attention):
    """Greedy decoding feeds back the argmax: fed the greedy output as tgt_in, teacher forcing must produce
    the same logits; padding in the source changes nothing; gradients check in float64."""
    model = nn.Seq2Seq(8, 9, embed=4, hidden=6, attention=attention, dtype=np.float64)
    src = np.array([[3, 4, 5, 6], [7, 3, 0, 0]])
    lengths = np.array([4, 2])
    ids, att = model.greedy_decode(src, lengths, 5, return_attention=True)
    assert ids.shape == (2, 5)
    tgt_in = np.concatenate([np.full((2, 1), model.bos), ids[:, :4]], axis=1)
    logits = model(src, lengths, tgt_in)
    assert logits.shape == (2, 5, 9)
    first_eos = [list(r).index(model.eos) if model.eos in r else 5 for r in ids]
    for i, stop in enumerate(first_eos):
        np.testing.assert_array_equal(logits.data[i, :stop + 1].argmax(-1), ids[i, :stop + 1])
    wider = np.concatenate([src, np.zeros((2, 3), np.int64)], axis=1)  # more padding: same result
    np.testing.assert_allclose(model(wider, lengths, tgt_in).data, logits.data, atol=1e-12)
    if attention:
        assert att.shape[0] == 2 and 1 <= att.shape[1] <= 5 and att.shape[2] == 4
        assert (att[1, :, 2:] == 0).all()  # padded source steps get no attention
        np.testing.assert_allclose(att.sum(-1), 1, atol=1e-12)
    else:
        assert att is None
    crit = nn.SequenceCrossEntropy(ignore_index=0)
    tgt_out = np.array([[6, 5, 4, 3, 2], [3, 7, 2, 0, 0]])
    loss = crit(model(src, lengths, tgt_in), tgt_out)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    emb = model.src_embed.weight.grad
    assert not emb[0].any()  # the padding row
    w = model.out.weight
    probe = rng.standard_normal(w.shape) * 1e-6
    base = float(crit(model(src, lengths, tgt_in), tgt_out))
    w.data += probe
    moved = float(crit(model(src, lengths, tgt_in), tgt_out))
    w.data -= probe
    np.testing.assert_allclose(moved - base, (w.grad * probe).sum(), rtol=1e-4)


def test_seq2seq_runs_on_every_backend(backend):
    ref = nn.Seq2Seq(8, 9, embed=4, hidden=6, attention=True)
    m = nn.Seq2Seq(8, 9, embed=4, hidden=6, attention=True, backend=backend)
    m.load_state_dict(ref.state_dict())
    src, lengths, tgt_in = np.array([[3, 4, 5], [6, 0, 0]]), np.array([3, 1]), np.array([[1, 5, 4], [1, 6, 0]])
    np.testing.assert_allclose(backend.asnumpy(m(backend.asarray(src), backend.asarray(lengths),
                                                 backend.asarray(tgt_in)).data),
                               ref(src, lengths, tgt_in).data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.greedy_decode(backend.asarray(src), backend.asarray(lengths), 4),
                                  ref.greedy_decode(src, lengths, 4))


def _example():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "seq2seq_reverse.py"
    spec = importlib.util.spec_from_file_location("seq2seq_reverse", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seq2seq_example_data_and_metric():
    ex = _example()
    src, lengths, tgt_in, tgt_out = ex.make_data(5, 2, 4, "reverse", np.random.default_rng(0))
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(tgt_out[i, :n], src[i, :n][::-1])
        assert tgt_out[i, n] == ex.EOS and tgt_in[i, 0] == ex.BOS and (src[i, n:] == ex.PAD).all()
        np.testing.assert_array_equal(tgt_in[i, 1:n + 1], tgt_out[i, :n])
    assert ex.exact_match(tgt_out, tgt_out) == 1.0
    worse = tgt_out.copy()
    worse[0, 0] = ex.DIGIT0 + (worse[0, 0] - ex.DIGIT0 + 1) % 10
    assert ex.exact_match(worse, tgt_out) == 0.8


def test_seq2seq_example_learns_to_reverse_short_sequences(capsys):
    acc = _example().main(["--device", "cpu", "--min-len", "2", "--max-len", "4", "--train", "1500", "--test", "200",
                           "--epochs", "4", "--hidden", "32", "--embed", "12", "--lr", "1e-2"])
    assert acc >= 0.8
    assert "exact match" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("attention,floor", [(True, 0.97), (False, 0.85)])
def test_seq2seq_example_default_run(attention, floor):
    """The documented run (docs/curriculum.md): reverse 3-10 digits, 12 epochs."""
    args = ["--device", "cpu"] + ([] if attention else ["--no-attention"])
    assert _example().main(args) >= floor
