"""A small CNN (conv+ReLU, BN, max-pool, Residual, Linear) learns real MNIST digits within seconds."""
import gzip
import struct

import numpy as np

from gpunet import nn, optim
from gpunet.backend import get_backend


def read_idx(path):
    """IDX (big-endian magic: 0x0000, dtype code, ndim; then ndim uint32 sizes), gzip-compressed."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, code, ndim = struct.unpack(">HBB", data[:4])
    assert code == 0x08, f"{path}: expected unsigned bytes, got type code {code:#x}"
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def test_small_cnn_learns_mnist(mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    x = ((images[:, None].astype(np.float32) / 255.0) - 0.1307) / 0.3081
    y = labels.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:2048], y[:2048], x[8000:9000], y[8000:9000]

    get_backend("numpy").seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, activation="relu"), nn.BatchNorm2d(8), nn.MaxPool2d(2),    # 14x14
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)), activation="relu"),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10, init="xavier_uniform"))             # 7x7
    crit = nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    order = np.concatenate([np.random.default_rng(e).permutation(len(x_train)) for e in range(2)])  # 2 epochs
    losses = []
    for i in range(0, len(order), 64):
        idx = order[i:i + 64]
        opt.zero_grad()
        losses.append(float(crit(model(x_train[idx]), y_train[idx])))
        model.backward(crit.backward())
        opt.step()
    assert np.mean(losses[:3]) > 1.5 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    model.eval()
    accuracy = float((model(x_test).argmax(axis=1) == y_test).mean())
    print(f'mnist: loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-5:]):.3f}, held-out accuracy {accuracy:.3f}')
    assert accuracy > 0.85, accuracy
