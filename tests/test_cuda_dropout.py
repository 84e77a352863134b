"""Dropout masks (cuda_kernels/dropout.cu): bit for bit NumPy's Philox4x64-10 stream.

The reference is computed here straight from `np.random.Philox(key=seed, counter=counter).random_raw()`
(independently of NumpyOps), and NumpyOps must agree too. Seeds and counters are chosen to cross the
64-bit word boundaries of NumPy's 128-bit key and 256-bit counter (carries, wrap-around at 2**256).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.cuda.emulator import schedule_seed
from gpunet.cuda.loader import KernelContext, f32, i64, u64

# (seed, counter): plain, large, carries out of counter word 0 / 1 / 2, wrap at 2**256, key word 1 set
STREAMS = [
    (0, 0),
    (12345, 7),
    (2**63 - 1, 2**40 + 3),
    (7, 2**64 - 2),             # draws cross from counter word 0 into word 1
    (7, 2**128 - 3),            # ... into word 2
    (99, 2**192 - 1),           # ... into word 3
    (5, 2**256 - 2),            # the counter wraps to 0 after the first draw
    (2**100 + 17, 3),           # the key's second 64-bit word is non-zero
    (2**128 - 1, 2**255 + 11),  # largest key
]
SHAPES = [(1,), (3,), (4,), (13,), (2, 3, 5), (4, 1, 7, 3)]
PROBS = [0.0, 0.1, 0.5, 0.9, 0.999]


def numpy_mask(shape, p, seed, counter, dtype):
    n = int(np.prod(shape))
    words = np.random.Philox(key=seed, counter=counter).random_raw(n)
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    keep = np.asarray(1.0 / (1.0 - p)).astype(dtype)
    return np.where(u < p, dtype(0), keep).astype(dtype).reshape(shape)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("seed,counter", STREAMS, ids=[f"s{i}" for i in range(len(STREAMS))])
def test_mask_is_numpys_philox_stream(device_backend, seed, counter, dtype):
    be = device_backend
    for shape, p in zip(SHAPES, PROBS + [0.3]):
        got = be.asnumpy(be.ops.dropout_mask(shape, p, seed, counter, dtype))
        want = numpy_mask(shape, p, seed, counter, dtype)
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"shape {shape} p {p}")


def test_raw_words_match_pure_python_philox(device_backend):
    """A third opinion, independent of NumPy: tests/reference.py's Philox in Python integers. With
    p = 2**-k the drop decision reads bit pattern (word >> 11) < 2**(53-k): the top k bits of every
    word are checked, across all four output words of each block."""
    import reference as loop
    be = device_backend
    for seed, counter in STREAMS[::2]:
        words = np.array(loop.philox_raw(seed, counter, 24), dtype=np.uint64)
        for k in (1, 2, 3, 8):
            got = be.asnumpy(be.ops.dropout_mask((24,), 2.0**-k, seed, counter, np.float64))
            dropped = (words >> np.uint64(64 - k)) == 0
            np.testing.assert_array_equal(got == 0, dropped, err_msg=f"seed {seed} counter {counter} k {k}")


def test_matches_numpy_ops(device_backend):
    be = device_backend
    ref = get_backend("numpy", cpu_engine="numpy").ops  # the contract's reference engine
    for (seed, counter), dtype in zip(STREAMS, [np.float32, np.float64] * 5):
        got = be.asnumpy(be.ops.dropout_mask((6, 7), 0.25, seed, counter, dtype))
        want = ref.dropout_mask((6, 7), 0.25, seed, counter, dtype)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_large_mask_statistics_and_counter_shift(device_backend):
    """4099 elements (a partial last block): bits, keep rate, and counter+1 = the stream 4 words later."""
    be = device_backend
    n, p, seed = 4099, 0.3, 2024
    m = be.asnumpy(be.ops.dropout_mask((n,), p, seed, 10, np.float32))
    np.testing.assert_array_equal(m, numpy_mask((n,), p, seed, 10, np.float32))
    assert abs((m == 0).mean() - p) < 0.03
    assert set(np.unique(m)) == {np.float32(0), np.float32(1 / 0.7)}
    later = be.asnumpy(be.ops.dropout_mask((n - 4,), p, seed, 11, np.float32))
    np.testing.assert_array_equal(later, m[4:])


def test_any_grid_is_correct(device_backend):
    """One thread per 4-word block in a grid-stride loop: a tiny grid gives the same mask."""
    be = device_backend
    ctx = KernelContext(be.name)
    n, seed, counter = 103, 2**70 + 1, 2**64 - 5
    want = numpy_mask((n,), 0.5, seed, counter, np.float32)
    mask = be.xp.full((n,), 7.0, dtype=np.float32)
    words = [(seed >> (64 * i)) & (2**64 - 1) for i in range(2)] + [(counter >> (64 * i)) & (2**64 - 1)
                                                                    for i in range(4)]
    ctx.kernel("dropout.cu", "dropout_mask_f32")((2, 1, 1), (5, 1, 1),
                                                 (mask, i64(n), *(u64(w) for w in words), np.float64(0.5), f32(2.0)))
    np.testing.assert_array_equal(be.asnumpy(mask), want)


def test_deterministic_across_schedules(device_backend):
    be = device_backend
    runs = []
    for s in (None, 3, 4):
        with schedule_seed(s):
            runs.append(be.asnumpy(be.ops.dropout_mask((257,), 0.5, 11, 22, np.float64)).tobytes())
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_empty_and_errors(device_backend):
    be = device_backend
    assert be.asnumpy(be.ops.dropout_mask((0, 3), 0.5, 1, 0, np.float32)).shape == (0, 3)
    for p in (1.0, 1.5, -0.1, float("nan")):   # p = 1 is functional.dropout's all-zero case, not a mask
        with pytest.raises(ValueError, match="p must be"):
            be.ops.dropout_mask((3,), p, 1, 0, np.float32)
    with pytest.raises(ValueError, match="seed"):
        be.ops.dropout_mask((3,), 0.5, -1, 0, np.float32)
    with pytest.raises(ValueError, match="seed"):
        be.ops.dropout_mask((3,), 0.5, 2**128, 0, np.float32)
    with pytest.raises(ValueError, match="counter"):
        be.ops.dropout_mask((3,), 0.5, 1, 2**256, np.float32)
    with pytest.raises(TypeError, match="seed"):
        be.ops.dropout_mask((3,), 0.5, 1.5, 0, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.ops.dropout_mask((3,), 0.5, 1, 0, np.int32)
