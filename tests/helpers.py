"""Small assertions several test modules share (imported as `helpers`, as `reference` is)."""
import numpy as np


def weights(model):
    """A copy of the model's state dict (host arrays)."""
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    """Same names in the same order, every array bit for bit."""
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
