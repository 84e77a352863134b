"""Attention: nn.MultiheadAttention against torch.nn.MultiheadAttention with the same weights (outputs, weights,
input and parameter gradients, masks), additive (Bahdanau) attention against its equations written in torch,
gradcheck, every backend."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.gradcheck import gradcheck

torch = pytest.importorskip("torch")


def _t(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


def _torch_mha(ours, dtype):
    t = torch.nn.MultiheadAttention(ours.embed_dim, ours.num_heads, bias=ours.in_proj_bias is not None,
                                    batch_first=True).to(dtype)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
    return t


def _masks(rng, n, h, length, s, kind):
    """(key_padding_mask, attn_mask, is_causal) for the numpy arrays of one case."""
    if kind == "none":
        return None, None, False
    if kind == "padding":
        pad = np.zeros((n, s), bool)
        pad[0, -2:] = True   # the first sequence's last two keys are padding
        return pad, None, False
    if kind == "causal":
        return None, None, True
    if kind == "bool+padding":
        am = rng.random((length, s)) < 0.3
        am[:, 0] = False     # every query keeps a key
        pad = np.zeros((n, s), bool)
        pad[-1, -1] = True
        return pad, am, False
    if kind == "float3d":
        return None, rng.standard_normal((n * h, length, s)), False
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["none", "padding", "causal", "bool+padding", "float3d"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_multihead_attention_matches_torch(rng, kind, dtype, tol):
    n, length, e, h = 3, 4, 8, 2
    s = length if kind == "causal" else 5
    ours = nn.MultiheadAttention(e, h, dtype=dtype)
    tnet = _torch_mha(ours, getattr(torch, np.dtype(dtype).name))
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in ((n, length, e), (n, s, e), (n, s, e)))
    if kind == "causal":
        k = q
        v = q
    pad, am, causal = _masks(rng, n, h, length, s, kind)
    am = am.astype(dtype) if am is not None and am.dtype != bool else am
    tq, tk, tv = (gpunet.tensor(a, requires_grad=True) for a in (q, k, v))
    out, w = ours(tq, tk, tv, key_padding_mask=pad, attn_mask=am, is_causal=causal)
    dy, dw = rng.standard_normal(out.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    ((out * gpunet.tensor(dy)).sum() + (w * gpunet.tensor(dw)).sum()).backward()

    rq, rk, rv = _t(q, True), _t(k, True), _t(v, True)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(length, dtype=rq.dtype) if causal else \
        (None if am is None else _t(am))
    rout, rw = tnet(rq, rk, rv, key_padding_mask=None if pad is None else _t(pad), attn_mask=tmask,
                    is_causal=causal)
    ((rout * _t(dy)).sum() + (rw * _t(dw)).sum()).backward()
    assert out.shape == (n, length, e) and w.shape == (n, length, s)
    np.testing.assert_allclose(out.data, rout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(w.data, rw.detach().numpy(), rtol=tol, atol=tol)
    for name, ours_g, ref in (("query", tq.grad, rq.grad), ("key", tk.grad, rk.grad), ("value", tv.grad, rv.grad)):
        np.testing.assert_allclose(ours_g, ref.numpy(), rtol=tol, atol=tol, err_msg=name)
    grads = {name: p.grad.numpy() for name, p in tnet.named_parameters()}
    assert [name for name, _ in ours.named_parameters()] == list(grads)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], rtol=tol, atol=tol, err_msg=name)


def test_multihead_attention_layouts_options_and_names(rng):
    ours = nn.MultiheadAttention(6, 3, bias=False, batch_first=False, dtype=np.float64)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [("in_proj_weight", (18, 6)),
                                                                     ("out_proj.weight", (6, 6))]
    tnet = torch.nn.MultiheadAttention(6, 3, bias=False).double()  # PyTorch's default (L, N, E) layout
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
    x = rng.standard_normal((4, 2, 6))
    out, w = ours(gpunet.tensor(x), need_weights=True, average_attn_weights=False)  # self-attention
    rout, rw = tnet(_t(x), _t(x), _t(x), average_attn_weights=False)
    np.testing.assert_allclose(out.data, rout.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(w.data, rw.detach().numpy(), atol=1e-12)  # (N, heads, L, S) per head
    assert ours(gpunet.tensor(x), need_weights=False)[1] is None
    assert repr(ours).startswith("MultiheadAttention(6, num_heads=3, bias=False, batch_first=False\n")
    big = nn.MultiheadAttention(64, 4)
    bound = np.sqrt(6 / (64 + 192))  # PyTorch's xavier_uniform_ on the stacked (3E, E) matrix
    assert np.abs(big.in_proj_weight.data).max() <= bound and np.abs(big.in_proj_weight.data).max() > 0.95 * bound
    assert not big.in_proj_bias.data.any() and not big.out_proj.bias.data.any()
    assert np.abs(big.out_proj.weight.data).max() <= 1 / 8


def test_multihead_attention_dropout_acts_on_the_weights_in_training_only(rng):
    m = nn.MultiheadAttention(4, 2, dropout=0.5, dtype=np.float64)
    x = gpunet.tensor(rng.standard_normal((2, 6, 4)))
    a, _ = m(x)
    b, _ = m(x)
    assert not np.allclose(a.data, b.data)  # fresh masks
    m.eval()
    np.testing.assert_array_equal(m(x)[0].data, m(x)[0].data)


def test_attention_gradcheck(rng):
    m = nn.MultiheadAttention(4, 2, dtype=np.float64)
    pad = np.array([[False, False, True], [False, False, False]])
    q, kv = rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 3, 4))
    assert gradcheck(lambda q, kv: m(q, kv, kv, key_padding_mask=pad)[0], (q, kv)).ok
    add = nn.AdditiveAttention(3, 4, 5, dtype=np.float64)
    assert gradcheck(lambda s, h: add(s, h, key_padding_mask=pad)[0], (rng.standard_normal((2, 3)), kv)).ok
    assert gradcheck(lambda s, h: add(s, h)[1], (rng.standard_normal((2, 2, 3)), kv)).ok


def test_additive_attention_matches_its_equations_in_torch(rng):
    """e_j = v^T tanh(W_q s + W_k h_j + b), alpha = softmax(e) over unpadded j, context = sum_j alpha_j h_j."""
    m = nn.AdditiveAttention(3, 4, 5, dtype=np.float64)
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [
        ("query_proj.weight", (5, 3)), ("key_proj.weight", (5, 4)), ("key_proj.bias", (5,)), ("v.weight", (1, 5))]
    m.key_proj.bias.data[...] = rng.standard_normal(5)
    s, h = rng.standard_normal((2, 3)), rng.standard_normal((2, 6, 4))
    pad = np.zeros((2, 6), bool)
    pad[1, 4:] = True
    ts, th = gpunet.tensor(s, requires_grad=True), gpunet.tensor(h, requires_grad=True)
    ctx, w = m(ts, th, key_padding_mask=pad)
    dctx = rng.standard_normal(ctx.shape)
    ((ctx * gpunet.tensor(dctx)).sum() + (w * w).sum()).backward()

    p = {k: _t(v, True) for k, v in m.state_dict().items()}
    rs, rh = _t(s, True), _t(h, True)
    e = torch.tanh((rs @ p["query_proj.weight"].T)[:, None, :] + rh @ p["key_proj.weight"].T + p["key_proj.bias"])
    e = (e @ p["v.weight"].T)[..., 0].masked_fill(_t(pad), float("-inf"))
    alpha = torch.softmax(e, dim=1)
    rctx = (alpha[:, :, None] * rh).sum(dim=1)
    ((rctx * _t(dctx)).sum() + (alpha * alpha).sum()).backward()
    np.testing.assert_allclose(ctx.data, rctx.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(w.data, alpha.detach().numpy(), atol=1e-12)
    assert (w.data[1, 4:] == 0).all()
    np.testing.assert_allclose(ts.grad, rs.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(th.grad, rh.grad.numpy(), atol=1e-12)
    for name, prm in m.named_parameters():
        np.testing.assert_allclose(prm.grad, p[name].grad.numpy(), atol=1e-12, err_msg=name)
    # many queries at once, and keys projected once for a decoder's every step
    many, wm = m(gpunet.tensor(np.stack([s, s], axis=1)), gpunet.tensor(h), key_padding_mask=pad,
                 projected_keys=m.keys(gpunet.tensor(h)))
    assert many.shape == (2, 2, 4) and wm.shape == (2, 2, 6)
    np.testing.assert_allclose(many.data[:, 1], ctx.data, atol=1e-12)


def test_attention_every_backend_matches_numpy(backend, rng):
    ref = nn.MultiheadAttention(8, 2)
    m = nn.MultiheadAttention(8, 2, backend=backend)
    m.load_state_dict(ref.state_dict())
    q, kv = rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((2, 5, 8)).astype(np.float32)
    pad = np.zeros((2, 5), bool)
    pad[0, -1] = True
    outs = []
    for mod, put in ((ref, np.asarray), (m, backend.asarray)):
        tq, tkv = gpunet.tensor(put(q), requires_grad=True, backend=mod.backend), gpunet.tensor(put(kv), backend=mod.backend)
        out, w = mod(tq, tkv, tkv, key_padding_mask=put(pad), is_causal=False)
        (out * out).sum().backward()
        outs.append([backend.asnumpy(a) for a in (out.data, w.data, tq.grad, mod.in_proj_weight.grad)])
    for a, b in zip(outs[1], outs[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    add_ref, add = nn.AdditiveAttention(8, 8, 4), nn.AdditiveAttention(8, 8, 4, backend=backend)
    add.load_state_dict(add_ref.state_dict())
    c_ref, _ = add_ref(gpunet.tensor(q[:, 0]), gpunet.tensor(kv), key_padding_mask=pad)
    c, _ = add(gpunet.tensor(backend.asarray(q[:, 0]), backend=backend), gpunet.tensor(backend.asarray(kv), backend=backend),
               key_padding_mask=backend.asarray(pad))
    np.testing.assert_allclose(backend.asnumpy(c.data), c_ref.data, rtol=1e-5, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"embed_dim \(6\) must be divisible by num_heads \(4\)"):
        nn.MultiheadAttention(6, 4)
    m = nn.MultiheadAttention(4, 2)
    x = gpunet.tensor(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected query of shape \(N, T, E\) with E = 4, got \(2, 3, 5\)"):
        m(gpunet.tensor(np.zeros((2, 3, 5), np.float32)))
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(2, 3\) \(N, S\), got \(2, 4\)"):
        m(x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"expected attn_mask of shape \(3, 3\) or \(4, 3, 3\)"):
        m(x, attn_mask=np.zeros((2, 3), bool))
    with pytest.raises(TypeError, match="expected a boolean mask"):
        m(x, key_padding_mask=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"AdditiveAttention: expected keys of shape \(N, S, 4\)"):
        nn.AdditiveAttention(3, 4, 5)(gpunet.tensor(np.zeros((2, 3), np.float32)), x[:, :, :3])
