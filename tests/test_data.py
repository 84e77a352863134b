"""gpunet.data: IDX/CIFAR readers, normalisation, splits, the DataLoader and augmentation (offline)."""
import gzip
import pickle

import numpy as np
import pytest

from gpunet.data import (DataLoader, IDXError, RandomCropFlip, from_arrays, load_dataset, load_digits,
                         read_idx, read_images, read_labels, stratified_split)
from gpunet.data import cifar
from gpunet.data.idx import write_idx


def make_idx_dir(root, n_train=60, n_test=20, seed=0, gz=True, hw=(6, 5)):
    """Write a tiny MNIST-shaped dataset (four IDX files) into root; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8)}
    root.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        write_idx(root / (stem + (".gz" if gz else "")), a)
    return arrays


# --- IDX ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_idx_roundtrip_gzip_and_raw(tmp_path, name):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, a)
    np.testing.assert_array_equal(read_images(tmp_path / name), a)


def test_idx_bad_magic_names_file(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float type code
    with pytest.raises(IDXError, match=r"bad-idx3-ubyte.*magic"):
        read_idx(p)


def test_idx_wrong_rank_names_file(tmp_path):
    p = tmp_path / "labels-idx1-ubyte"
    write_idx(p, np.zeros(5, np.uint8))
    with pytest.raises(IDXError, match=r"labels-idx1-ubyte.*1 dimension.*expected 3"):
        read_images(p)


def test_idx_truncated_data_and_header(tmp_path):
    p = tmp_path / "t-idx3-ubyte"
    write_idx(p, np.zeros((4, 3, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(IDXError, match=r"t-idx3-ubyte.*shape \(4, 3, 3\).*31 bytes.*truncated"):
        read_images(p)
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(IDXError, match="truncated IDX header"):
        read_images(p)


def test_idx_corrupt_gzip_names_file(tmp_path):
    p = tmp_path / "c-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")[:-6])
    with pytest.raises(IDXError, match="c-idx1-ubyte.gz"):
        read_labels(p)


def test_labels_out_of_range(tmp_path):
    p = tmp_path / "l-idx1-ubyte"
    write_idx(p, np.array([1, 12], np.uint8))
    with pytest.raises(IDXError, match="label 12 out of range"):
        read_labels(p)


# --- datasets -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_data_dir_normalised_with_train_stats(tmp_path, gz, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    raw = make_idx_dir(tmp_path / "d", gz=gz)
    ds = load_dataset("mnist", tmp_path / "d", download_missing=False)
    assert ds.x_train.shape == (60, 1, 6, 5) and ds.x_test.shape == (20, 1, 6, 5)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    xtr = raw["train-images-idx3-ubyte"] / 255.0
    np.testing.assert_allclose(ds.mean, [xtr.mean()], rtol=1e-6)
    np.testing.assert_allclose(ds.std, [xtr.std()], rtol=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, (raw["t10k-images-idx3-ubyte"][:, None] / 255.0 - ds.mean) / ds.std,
                               rtol=1e-5, atol=1e-5)  # test split uses the TRAIN statistics
    np.testing.assert_array_equal(ds.y_test, raw["t10k-labels-idx1-ubyte"])


def test_dataset_subfolder_and_stats_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "d" / "fashion-mnist")
    ds = load_dataset("fashion-mnist", tmp_path / "d", download_missing=False, stats=([0.5], [0.25]))
    assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10
    np.testing.assert_array_equal(ds.mean, [0.5])


def test_missing_files_error_names_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    (tmp_path / "d").mkdir()
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", tmp_path / "d", download_missing=False)
    msg = str(e.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert "train-images-idx3-ubyte.gz" not in msg.split("looked in")[0]
    assert str(tmp_path / "d") in msg and str(tmp_path / "cache" / "mnist") in msg


def test_image_label_count_mismatch_names_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 20 images but .*t10k-labels.* 7 labels"):
        load_dataset("mnist", tmp_path / "d", download_missing=False)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_digits_split_is_stratified_fixed_and_normalised():
    a, b = load_digits(), load_digits()
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.y_train) + len(a.y_test) == 1797
    assert abs(len(a.y_test) - 0.2 * 1797) <= 1
    np.testing.assert_array_equal(a.x_test, b.x_test)
    frac = np.bincount(a.y_test) / np.bincount(np.concatenate([a.y_train, a.y_test]))
    assert frac.min() > 0.18 and frac.max() < 0.22
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3


def test_limit_train_is_stratified_and_seeded():
    ds = load_digits()
    a, b, c = ds.limit_train(200, seed=1), ds.limit_train(200, seed=1), ds.limit_train(200, seed=2)
    assert len(a.y_train) == 200 and len(a.y_test) == len(ds.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.x_train, c.x_train)
    assert np.bincount(a.y_train).min() >= 18
    assert ds.limit_train(None) is ds


def test_stratified_split_properties():
    y = np.repeat(np.arange(3), [50, 30, 20])
    tr, te = stratified_split(y, 0.2, seed=3)
    assert len(te) == 20 and len(tr) == 80 and not set(tr) & set(te)
    np.testing.assert_array_equal(np.bincount(y[te]), [10, 6, 4])
    tr2, te2 = stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(te, te2)
    _, te3 = stratified_split(y, 7, seed=0)
    assert len(te3) == 7
    with pytest.raises(ValueError):
        stratified_split(y, 100)


def test_from_arrays_validates():
    x = np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match="4 train images but 3 labels"):
        from_arrays(x, np.zeros(3), x, np.zeros(4))
    with pytest.raises(ValueError, match=r"alike in both splits.*\(10, 3, 4, 4\).*\(4, 2, 3, 3\)"):
        from_arrays(np.zeros((10, 3, 4, 4)), np.zeros(10), x, np.zeros(4))
    ds = from_arrays(np.random.default_rng(0).random((10, 3, 4, 4)), np.arange(10) % 2, np.zeros((4, 3, 4, 4)),
                     np.zeros(4))
    assert ds.mean.shape == (3,) and ds.in_shape == (3, 4, 4) and ds.num_classes == 2


# --- CIFAR --------------------------------------------------------------------------------------------

def write_cifar(folder, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in cifar.TRAIN_BATCHES + (cifar.TEST_BATCH,):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        d[b"labels"] = [int(v) for v in d[b"labels"]]
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def test_cifar_batches_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    write_cifar(tmp_path / "d" / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path / "d", download_missing=False)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.mean.shape == (3,) and ds.classes[0] == "airplane"


def test_cifar_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(cifar.CIFARError, match=r"data_batch_1.*refusing to load posix.system"):
        cifar.read_batch(p)


def test_cifar_bad_shape(tmp_path):
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(cifar.CIFARError, match=r"test_batch.*\(N, 3072\)"):
        cifar.read_batch(p)


def test_cifar_missing_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path, download_missing=False)


# --- DataLoader ---------------------------------------------------------------------------------------

def test_loader_covers_everything_keeps_last_partial_batch():
    X, y = np.arange(10 * 2, dtype=np.float32).reshape(10, 2), np.arange(10)
    loader = DataLoader(X, y, batch_size=4, seed=0)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    ys = np.concatenate([b[1] for b in batches])
    assert sorted(ys) == list(range(10)) and not np.array_equal(ys, np.arange(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # images stay with their labels
    dl = DataLoader(X, y, batch_size=4, drop_last=True)
    assert len(dl) == 2 and [len(b[1]) for b in dl] == [4, 4]
    assert [list(b[1]) for b in DataLoader(X, y, 4, shuffle=False)][0] == [0, 1, 2, 3]


def test_loader_seeded_per_epoch_and_resumable():
    X, y = np.zeros((50, 1)), np.arange(50)
    a, b = DataLoader(X, y, 8, seed=5), DataLoader(X, y, 8, seed=5)
    ea1, ea2 = [np.concatenate([yb for _, yb in a]) for _ in range(2)]
    assert not np.array_equal(ea1, ea2)  # a new order each epoch
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in b]), ea1)
    c = DataLoader(X, y, 8, seed=5)
    c.load_state_dict(a.state_dict())
    b_next = np.concatenate([yb for _, yb in b])
    a3 = np.concatenate([yb for _, yb in a])
    c3 = np.concatenate([yb for _, yb in c])
    np.testing.assert_array_equal(a3, c3)
    assert not np.array_equal(b_next, a3)
    assert not np.array_equal(np.concatenate([yb for _, yb in DataLoader(X, y, 8, seed=6)]), ea1)


def test_loader_validates():
    with pytest.raises(ValueError, match="X has 3 samples but y has 2"):
        DataLoader(np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(np.zeros((3, 1)), np.zeros(3), batch_size=0)


def test_loader_moves_batches_to_backend(backend):
    X, y = np.ones((5, 1, 2, 2), np.float32), np.arange(5)
    for xb, yb in DataLoader(X, y, 2, backend=backend):
        backend.check(xb, "x")
        backend.check(yb, "y")
        assert xb.dtype == np.float32 and yb.dtype == np.int64


def test_host_side_builders_refuse_device_arrays_by_name(backend):
    """DataLoader and from_arrays batch on the host: a device array gets a DeviceError naming it and the remedy,
    not CuPy's generic 'implicit conversion' TypeError (and is never copied behind the user's back)."""
    if not backend.is_gpu:
        pytest.skip("only device arrays are refused")
    from gpunet.backend import DeviceError
    X, y = backend.asarray(np.ones((4, 1, 2, 2), np.float32)), backend.asarray(np.arange(4))
    with pytest.raises(DeviceError, match=r"DataLoader X: got a CuPy \(device\) array of shape \(4, 1, 2, 2\).*\.get\(\)"):
        DataLoader(X, np.arange(4), 2, backend=backend)
    with pytest.raises(DeviceError, match="DataLoader y: got a CuPy"):
        DataLoader(np.ones((4, 1, 2, 2), np.float32), y, 2, backend=backend)
    with pytest.raises(DeviceError, match="mine: images: got a CuPy"):
        from_arrays(X, np.arange(4), np.ones((4, 1, 2, 2)), np.arange(4), name="mine")
    with pytest.raises(DeviceError, match="mine: y_test: got a CuPy"):
        from_arrays(np.ones((4, 1, 2, 2)), np.arange(4), np.ones((4, 1, 2, 2)), y, name="mine")


# --- augmentation -------------------------------------------------------------------------------------

def test_crop_flip_matches_a_naive_loop():
    rng_data = np.random.default_rng(0)
    x = rng_data.standard_normal((16, 3, 5, 7)).astype(np.float32)
    aug = RandomCropFlip(padding=2)
    out = aug(x, np.random.default_rng(42))
    r = np.random.default_rng(42)
    oy, ox, flip = r.integers(0, 5, 16), r.integers(0, 5, 16), r.random(16) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(16):
        ref = padded[i, :, oy[i]:oy[i] + 5, ox[i]:ox[i] + 7]
        if flip[i]:
            ref = ref[:, :, ::-1]
        np.testing.assert_array_equal(out[i], ref)
    assert out.shape == x.shape and out.dtype == x.dtype and flip.any() and not flip.all()


def test_crop_without_padding_or_flip_is_identity_and_seeded():
    x = np.random.default_rng(1).random((4, 1, 3, 3))
    np.testing.assert_array_equal(RandomCropFlip(0, flip=False)(x, np.random.default_rng(0)), x)
    a = RandomCropFlip(4)(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, RandomCropFlip(4)(x, np.random.default_rng(7)))


def test_loader_augments_on_the_host_reproducibly():
    X, y = np.random.default_rng(0).random((12, 3, 8, 8)).astype(np.float32), np.arange(12)
    a = [xb for xb, _ in DataLoader(X, y, 5, seed=3, augment=RandomCropFlip(2))]
    b = [xb for xb, _ in DataLoader(X, y, 5, seed=3, augment=RandomCropFlip(2))]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
