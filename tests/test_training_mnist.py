"""Real data: the MNIST test set from ../shared (train on 8,000 images, test on the other 2,000)."""
import numpy as np
import pytest

from gpunet.data import from_arrays, read_images, read_labels, stratified_split
from gpunet.training import fit


def mnist_split(mnist_dir, n_test=2000, limit=None):
    x = read_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y = read_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    tr, te = stratified_split(y, n_test, seed=0)
    if limit is not None:
        tr, te = tr[:limit[0]], te[:limit[1]]
    return from_arrays(x[tr], y[tr], x[te], y[te], name="mnist", scale=255.0)


def test_short_run_on_a_real_subset(mnist_dir):
    data = mnist_split(mnist_dir, limit=(1500, 500))
    r = fit(data, epochs=2, batch_size=32, device="cpu", progress="none", log=None)
    assert r.metrics["test_samples"] == 500 and r.metrics["dataset"] == "mnist"
    assert r.metrics["test_accuracy"] >= 0.85, r.metrics


@pytest.mark.slow
def test_cnn_reaches_97_percent_on_held_out_real_mnist(mnist_dir, tmp_path):
    data = mnist_split(mnist_dir)
    assert len(data.y_train) == 8000 and len(data.y_test) == 2000
    r = fit(data, epochs=8, augment=True, device="auto", out_dir=tmp_path, progress="none", log=None)
    assert r.metrics["test_accuracy"] >= 0.97, r.metrics
    assert np.isfinite(r.metrics["test_loss"])
