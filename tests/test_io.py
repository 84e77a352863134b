"""gpunet.io: state dicts as .safetensors/.npz round trip exactly, and a conv/BN/linear network trained in
either library gives the same outputs in the other (PyTorch parts skip without torch)."""
import numpy as np
import pytest

from gpunet import io, nn, optim

try:
    import torch
except ImportError:  # optional cross-check
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def ours_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


def torch_net():
    t = torch.nn
    return t.Sequential(t.Conv2d(1, 4, 3, padding=1), t.BatchNorm2d(4), t.ReLU(), t.MaxPool2d(2),
                        t.Conv2d(4, 6, 3, padding=1, bias=False), t.BatchNorm2d(6), t.ReLU(),
                        t.Flatten(), t.Linear(6 * 4 * 4, 10))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_is_exact_and_keeps_keys_dtypes(tmp_path, suffix):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LSTM(4, 2), nn.Embedding(5, 3))
    sd = model.state_dict()
    path = io.save(model, tmp_path / f"w{suffix}")
    back = io.load(path)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    assert back["1.num_batches_tracked"].shape == () and back["1.num_batches_tracked"].dtype == np.int64
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LSTM(4, 2), nn.Embedding(5, 3)).double()
    assert io.load_into(fresh, path) == ([], [])
    assert fresh[0].weight.dtype == np.float64  # cast to the model's dtype on load
    np.testing.assert_allclose(fresh[2].weight_hh_l0.data, sd["2.weight_hh_l0"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_safetensors_header_says_pytorch_format(tmp_path):
    from safetensors import safe_open
    path = io.save({"w": np.ones((2, 2), np.float32)}, tmp_path / "a.safetensors", metadata={"epoch": 3})
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt", "epoch": "3"}


def test_errors(tmp_path):
    with pytest.raises(io.WeightsFormatError, match=r"unknown weights format '\.bin'"):
        io.save({"w": np.ones(2)}, tmp_path / "w.bin")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        io.load(tmp_path / "missing.npz")
    bad = tmp_path / "obj.npz"
    np.savez(bad, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(io.WeightsFormatError, match="not a plain .npz of arrays"):
        io.load(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(io.WeightsFormatError, match="cannot read as safetensors"):
        io.load(tmp_path / "junk.safetensors")
    with pytest.raises(io.WeightsFormatError, match="gpunet writes .safetensors or .npz"):
        io.save({"w": np.ones(2)}, tmp_path / "w.pt")
    with pytest.raises(KeyError, match="keys do not match"):
        io.load_into(nn.Linear(2, 2), io.save({"weight": np.ones((2, 2))}, tmp_path / "w.npz"))


def _train_ours(model, rng, steps=3):
    opt, loss_fn = optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.SoftmaxCrossEntropy()
    for _ in range(steps):
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()


@needs_torch
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_trained_here_loads_into_torch_with_identical_outputs(rng, tmp_path, suffix):
    from safetensors.torch import load_file
    ours = ours_net()
    _train_ours(ours, rng)
    assert float(np.abs(ours.state_dict()["1.running_mean"]).sum()) > 0  # trained statistics travel too
    path = io.save(ours, tmp_path / f"ours{suffix}")
    tnet = torch_net()
    state = load_file(str(path)) if suffix == ".safetensors" else {k: torch.from_numpy(v) for k, v in
                                                                   np.load(path).items()}
    tnet.load_state_dict(state, strict=True)
    ours.eval(), tnet.eval()
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = tnet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), ref, rtol=1e-5, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_trained_in_torch_loads_here_with_identical_outputs(rng, tmp_path, suffix):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tnet = torch_net()
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        x = torch.from_numpy(rng.standard_normal((8, 1, 8, 8)).astype(np.float32))
        torch.nn.functional.cross_entropy(tnet(x), torch.from_numpy(rng.integers(0, 10, 8))).backward()
        opt.step()
    path = tmp_path / f"torch{suffix}"
    sd = tnet.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    else:
        torch.save(sd, path)
    ours = ours_net()
    assert io.load_into(ours, path) == ([], [])
    tnet.eval(), ours.eval()
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = tnet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), ref, rtol=1e-5, atol=1e-5)
    assert int(ours.state_dict()["1.num_batches_tracked"]) == 3


@needs_torch
def test_recurrent_weights_cross_over(rng, tmp_path):
    """An LSTM and an embedding table written here load into torch.nn with the same results."""
    ours = nn.Sequential(nn.Embedding(7, 4), nn.LSTM(4, 5, num_layers=2))
    path = io.save(ours, tmp_path / "seq.safetensors")
    t_emb, t_lstm = torch.nn.Embedding(7, 4), torch.nn.LSTM(4, 5, num_layers=2, batch_first=True)
    state = io.to_torch_state_dict(io.load(path))
    t_emb.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("0.")})
    t_lstm.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("1.")})
    ids = rng.integers(0, 7, size=(3, 6))
    with torch.no_grad():
        ref = t_lstm(t_emb(torch.from_numpy(ids)))[0].numpy()
    np.testing.assert_allclose(ours(ids), ref, rtol=1e-5, atol=1e-6)
    assert list(io.to_numpy_state_dict(t_lstm)) == [k[2:] for k in ours.state_dict() if k.startswith("1.")]


def test_missing_safetensors_package_says_how_to_get_it(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"w\.safetensors: .*pip install safetensors"):
        io.save({"w": np.ones(2)}, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written
    io.save({"w": np.ones(2)}, tmp_path / "w.npz")  # .npz needs no extra package
