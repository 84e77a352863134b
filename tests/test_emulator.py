"""The CPU emulator of CUDA kernels (gpunet.cuda.emulator), on the small kernels in tests/kernels/.

Every kernel here is real CUDA: test_kernels_compile_with_nvcc / _with_nvrtc check that.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gpunet.cuda import emulator as emu
from gpunet.cuda.emulator import (EmulatedModule, EmulatorCompileError, KernelCrashError, KernelDeadlockError,
                                  KernelLaunchError, KernelNotFoundError, KernelTimeoutError, KernelTrapError,
                                  schedule_seed, set_schedule_seed)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

KDIR = Path(__file__).resolve().parent / "kernels"
OPTS = (f"-I{KDIR}", "-std=c++17")
SEEDS = [None, 1, 2]

_modules: dict = {}


def mod(name: str, options=OPTS) -> EmulatedModule:
    key = (name, tuple(options))
    if key not in _modules:
        _modules[key] = EmulatedModule(path=str(KDIR / name), options=options)
    return _modules[key]


def line_of(name: str, tag: str) -> int:
    """Line number of the `// @tag` marker in tests/kernels/<name>."""
    for i, line in enumerate((KDIR / name).read_text().splitlines(), start=1):
        if re.search(rf"//\s*@{re.escape(tag)}\s*$", line):
            return i
    raise AssertionError(f"no @{tag} in {name}")


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed={s}")
def seed(request):
    with schedule_seed(request.param):
        yield request.param


i32, u32, i64, u64, f32, f64 = np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64
rng = np.random.default_rng(1234)


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("grid,block", [(7, 33), ((3, 2), (8, 4)), ((3, 2, 2), (4, 3, 2)), ((1, 1, 5), (1, 1, 64)),
                                        (1, (5, 7, 3))])
def test_builtin_indices(grid, block, seed):
    g = grid if isinstance(grid, tuple) else (grid,)
    b = block if isinstance(block, tuple) else (block,)
    g, b = g + (1,) * (3 - len(g)), b + (1,) * (3 - len(b))
    nthreads = int(np.prod(g) * np.prod(b))
    out = np.zeros((nthreads, 12), np.uint32)
    mod("geometry.cu").get_function("record_ids")(grid, block, (out,))
    # expected: block-major, x fastest, then thread x fastest
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(n) for n in (g[2], g[1], g[0], b[2], b[1], b[0])), indexing="ij")
    exp = np.stack([tx, ty, tz, bx, by, bz] + [np.full_like(tx, v) for v in b + g], axis=-1).reshape(nthreads, 12)
    np.testing.assert_array_equal(out, exp)


def test_saxpy_bounds_checked_tail(seed):
    n = 1000
    x = rng.standard_normal(n).astype(f32)
    y = rng.standard_normal(n + 5).astype(f32)        # 5 guard elements past n must stay untouched
    y0 = y.copy()
    mod("geometry.cu").get_function("saxpy")((n + 127) // 128, 128, (f32(2.5), x, y, i32(n)))
    np.testing.assert_array_equal(y[:n], f32(2.5) * x + y0[:n])
    np.testing.assert_array_equal(y[n:], y0[n:])


def test_options_define_macro():
    k = mod("geometry.cu", OPTS + ("-DEMU_TEST_SCALE=3", "--use_fast_math", "-lineinfo")).get_function("saxpy")
    x, y = np.ones(10, f32), np.ones(10, f32)
    k(1, 32, (f32(2.0), x, y, i32(10)))
    np.testing.assert_array_equal(y, np.full(10, 5.0, f32))


def test_matadd_2d_odd_shape(seed):
    rows, cols = 37, 53
    a, b = rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))
    c = np.zeros_like(a)
    mod("geometry.cu").get_function("matadd2d")(((cols + 15) // 16, (rows + 7) // 8), (16, 8),
                                                (a, b, c, i32(rows), i32(cols)))
    np.testing.assert_array_equal(c, a + b)


def test_grid_stride_int64():
    n = 3001
    data = np.arange(n, dtype=np.int64) - 1000
    mod("geometry.cu").get_function("grid_stride_scale")(5, 64, (data, u64(n), i64(-3)))
    np.testing.assert_array_equal(data, (np.arange(n) - 1000) * -3)


def test_intrinsics():
    out, iout = np.zeros(12, f32), np.zeros(6, np.int32)
    mod("geometry.cu").get_function("intrinsics")(1, 32, (np.array([-1.25], f32), out, iout))
    assert out[0] == -np.inf
    np.testing.assert_array_equal(out[1:], np.array([-1.25, 0.5, 0.25, 7, 12, 4, 3, 1, 3, 13, -1.25], f32))
    np.testing.assert_array_equal(iout, [2, -2, 0x3F800000, 8 + 3100, 4, 4])


def test_device_printf(capfd):
    mod("geometry.cu").get_function("hello")(2, 32, (i32(7),))
    out = capfd.readouterr().out
    assert "hello from block 0 tag 7" in out and "hello from block 1 tag 7" in out


# ------------------------------------------------------------------ shared memory
def test_transpose_tiled(seed):
    rows, cols = 37, 70
    a = rng.standard_normal((rows, cols)).astype(f32)
    out = np.zeros((cols, rows), f32)
    mod("shared.cu").get_function("transpose_tiled")(((cols + 31) // 32, (rows + 31) // 32), (32, 8),
                                                     (a, out, i32(rows), i32(cols)))
    np.testing.assert_array_equal(out, a.T)


@pytest.mark.parametrize("kernel", ["reduce_tree", "reduce_tree_shfl"])
def test_block_reductions(kernel, seed):
    n, bs = 10 * 256 - 17, 256
    x = rng.standard_normal(n).astype(f32)
    out = np.zeros(10, f32)
    mod("shared.cu").get_function(kernel)(10, bs, (x, out, i32(n)))
    ref = np.pad(x, (0, 17)).reshape(10, bs).astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_reduction_bitwise_identical_across_seeds():
    x = rng.standard_normal(4096).astype(f32)
    results = []
    for s in [None, 1, 2, 3, 4]:
        out = np.zeros(16, f32)
        with schedule_seed(s):
            mod("shared.cu").get_function("reduce_tree_shfl")(16, 256, (x, out, i32(4096)))
        results.append(out)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_templated_static_shared_helper(seed):
    n = 1000
    x = rng.standard_normal(n)
    out = np.zeros(4)
    mod("shared.cu").get_function("reduce_helper")(4, 256, (x, out, i32(n)))
    np.testing.assert_allclose(out, np.pad(x, (0, 24)).reshape(4, 256).sum(axis=1), rtol=1e-12)


def test_dynamic_shared_memory(seed):
    n, bs = 1000, 128
    data = np.arange(n, dtype=f32)
    mod("shared.cu").get_function("reverse_dynamic")((n + bs - 1) // bs, bs, (data, i32(n)), shared_mem=bs * 4)
    exp = np.concatenate([np.arange(n, dtype=f32)[i:i + bs][::-1] for i in range(0, n, bs)])
    np.testing.assert_array_equal(data, exp)

    out = np.zeros(64, np.int32)
    mod("shared.cu").get_function("dynamic_two_views")(1, 64, (out, f32(2.0)), shared_mem=16 + 64 * 4)
    np.testing.assert_array_equal(out, 2 * 3 * (63 - np.arange(64)))

    data = np.arange(96, dtype=f32)
    mod("shared.cu").get_function("rotate_dynamic_global")(3, 32, (data,), shared_mem=32 * 4)
    np.testing.assert_array_equal(data, np.roll(np.arange(96, dtype=f32).reshape(3, 32), -1, axis=1).ravel())


def test_dynamic_shared_memory_limit():
    k = mod("shared.cu").get_function("reverse_dynamic")
    data = np.zeros(64, f32)
    with pytest.raises(KernelLaunchError, match="max_dynamic_shared_size_bytes"):
        k(1, 64, (data, i32(64)), shared_mem=64 * 1024)
    k2 = EmulatedModule(path=str(KDIR / "shared.cu"), options=OPTS).get_function("reverse_dynamic")
    k2.max_dynamic_shared_size_bytes = 64 * 1024
    k2(1, 64, (data, i32(64)), shared_mem=64 * 1024)
    with pytest.raises(KernelLaunchError):
        k2.max_dynamic_shared_size_bytes = 300 * 1024


def test_uninitialised_shared_memory_is_poisoned():
    f, i, d = np.zeros(64, f32), np.zeros(64, np.int32), np.zeros(64, f32)
    mod("shared.cu").get_function("read_uninitialised")(1, 64, (f, i, d), shared_mem=64 * 4)
    assert f[0] == 1.0 and np.isnan(f[1:]).all()
    assert (i == -1).all()
    assert np.isnan(d).all()


def test_shared_memory_does_not_leak_between_blocks(seed):
    out = np.zeros((4, 32), f32)
    mod("shared.cu").get_function("block_isolation")(4, 32, (out,))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[2], 2.0)
    assert np.isnan(out[1]).all() and np.isnan(out[3]).all()


def test_syncthreads_count_and_or():
    out = np.zeros(3, np.int32)
    k = mod("shared.cu").get_function("barrier_votes")
    k(1, 100, (np.where(np.arange(100) % 3 == 0, 1, 0).astype(np.int32), out))
    np.testing.assert_array_equal(out, [34, 0, 1])
    k(1, 100, (np.ones(100, np.int32), out))
    np.testing.assert_array_equal(out, [100, 1, 1])


# ------------------------------------------------------------------ warps
def _shfl_ref(v, kind, arg, width):
    out = np.empty_like(v)
    for t in range(v.size):
        lane, base = t % 32, t - t % 32
        seg = lane & ~(width - 1)
        if kind == "idx":
            src = seg + (arg & (width - 1))
        elif kind == "up":
            src = lane if lane - arg < seg else lane - arg
        elif kind == "down":
            src = lane if lane + arg >= seg + width else lane + arg
        else:
            src = lane ^ arg
            src = lane if src >= seg + width else src
        out[t] = v[base + src]
    return out


@pytest.mark.parametrize("src,delta,width", [(5, 1, 32), (3, 3, 16), (13, 4, 8), (0, 2, 4), (31, 16, 32)])
def test_shuffle_semantics(src, delta, width, seed):
    n = 128
    x = rng.standard_normal(n).astype(f32)
    outs = [np.zeros(n, f32) for _ in range(4)]
    mod("warp.cu").get_function("shuffles")(2, 64, (x, *outs, i32(src), i32(delta), i32(width)))
    for out, kind, arg in zip(outs, ("idx", "up", "down", "xor"), (src, delta, delta, delta)):
        np.testing.assert_array_equal(out, _shfl_ref(x, kind, arg, width), err_msg=kind)


def test_shuffle_from_missing_lane_of_partial_warp_is_poison():
    x = np.arange(48, dtype=f32)
    outs = [np.zeros(48, f32) for _ in range(4)]
    mod("warp.cu").get_function("shuffles")(1, 48, (x, *outs, i32(0), i32(8), i32(32)))
    down = outs[2]
    np.testing.assert_array_equal(down[:32], _shfl_ref(x[:32], "down", 8, 32))   # a full warp
    np.testing.assert_array_equal(down[32:40], np.arange(40, 48))                  # sources exist
    assert np.isnan(down[40:]).all()                # lanes 8..15 of warp 1 read lanes 16..23: no such threads


def test_warp_sums_and_scan(seed):
    x = rng.standard_normal(96)
    bf, down = np.zeros(96), np.zeros(3)
    mod("warp.cu").get_function("warp_sums")(3, 32, (x, bf, down))
    sums = x.reshape(3, 32).sum(axis=1)
    np.testing.assert_allclose(bf, np.repeat(sums, 32), rtol=1e-12)
    np.testing.assert_allclose(down, sums, rtol=1e-12)

    xi = rng.integers(-50, 50, 128).astype(np.int32)
    out = np.zeros(128, np.int32)
    mod("warp.cu").get_function("warp_scan")(2, 64, (xi, out))
    np.testing.assert_array_equal(out, np.cumsum(xi.reshape(4, 32), axis=1).ravel())

    xf = rng.standard_normal(128).astype(f32)
    outf = np.zeros(4, f32)
    mod("warp.cu").get_function("helper_warp_sum")(2, 64, (xf, outf))
    np.testing.assert_allclose(outf, xf.reshape(4, 32).sum(axis=1), rtol=1e-5)


def test_votes(seed):
    x = rng.integers(-3, 4, 64).astype(np.int32)
    x[32:] = np.abs(x[32:]) + 1                       # warp 1: all positive
    ballot, radd, match = np.zeros(64, np.uint32), np.zeros(64, np.int32), np.zeros(64, np.uint32)
    anyv, allv = np.zeros(64, np.int32), np.zeros(64, np.int32)
    mod("warp.cu").get_function("votes")(1, 64, (x, ballot, anyv, allv, radd, match))
    for w in range(2):
        xs = x[32 * w:32 * w + 32]
        bits = int(sum(1 << lane for lane in range(32) if xs[lane] > 0))
        np.testing.assert_array_equal(ballot[32 * w:32 * w + 32], bits)
        np.testing.assert_array_equal(anyv[32 * w:32 * w + 32], int(bits != 0))
        np.testing.assert_array_equal(allv[32 * w:32 * w + 32], int(bits == 0xFFFFFFFF))
        np.testing.assert_array_equal(radd[32 * w:32 * w + 32], xs.sum())
        for lane in range(32):
            exp = sum(1 << m for m in range(32) if (xs[m] & 3) == (xs[lane] & 3))
            assert match[32 * w + lane] == exp
    assert allv[32] == 1


def test_partial_warp_vote():
    out, active = np.zeros(40, np.uint32), np.zeros(40, np.uint32)
    mod("warp.cu").get_function("partial_warp_ballot")(1, 40, (out, active))
    np.testing.assert_array_equal(out[:32], 0xFFFFFFFF)
    np.testing.assert_array_equal(out[32:], 0xFF)
    np.testing.assert_array_equal(active[:32], 0xFFFFFFFF)
    np.testing.assert_array_equal(active[32:], 0xFF)


def test_activemask_after_early_exit(seed):
    x = rng.standard_normal(32).astype(f32)
    out, masks = np.zeros(1, f32), np.zeros(32, np.uint32)
    mod("warp.cu").get_function("active_after_exit")(1, 32, (x, out, masks, i32(21)))
    np.testing.assert_array_equal(masks[:21], (1 << 21) - 1)
    np.testing.assert_allclose(out[0], x[:21].sum(), rtol=1e-5)


def test_subwarp_masks_and_syncwarp(seed):
    x = rng.standard_normal(64).astype(f32)
    out = np.zeros(64, f32)
    mod("warp.cu").get_function("half_warp_sums")(1, 64, (x, out))
    np.testing.assert_allclose(out, np.repeat(x.reshape(4, 16).sum(axis=1), 16), rtol=1e-5)

    xi = np.arange(64, dtype=np.int32)
    oi = np.zeros(64, np.int32)
    mod("warp.cu").get_function("syncwarp_exchange")(1, 64, (xi, oi))
    np.testing.assert_array_equal(oi, xi ^ 1)


# ------------------------------------------------------------------ atomics
def test_histogram(seed):
    values = rng.integers(0, 200, 5000).astype(np.int32)
    hist = np.zeros(200, np.uint32)
    mod("atomics.cu").get_function("histogram")(4, 128, (values, i32(values.size), hist, i32(200)))
    np.testing.assert_array_equal(hist, np.bincount(values, minlength=200))


def test_atomic_mix(seed):
    n = 777
    x = rng.random(n).astype(f32)
    fsum, dsum = np.zeros(1, f32), np.zeros(1)
    imax, imin = np.array([-(2**31)], np.int32), np.array([2**31 - 1], np.int32)
    tickets, counter = np.zeros(n, np.uint32), np.zeros(1, np.uint32)
    mod("atomics.cu").get_function("atomic_mix")(7, 128, (x, i32(n), fsum, dsum, imax, imin, tickets, counter))
    np.testing.assert_allclose(fsum[0], x.astype(np.float64).sum(), rtol=1e-5)
    np.testing.assert_allclose(dsum[0], x.astype(np.float64).sum(), rtol=1e-12)
    assert imax[0] == (x * f32(1000)).astype(np.int32).max() and imin[0] == (x * f32(1000)).astype(np.int32).min()
    assert counter[0] == n and sorted(tickets) == list(range(n))


def test_spin_lock_with_atomic_cas(seed):
    out = np.zeros(3, np.int32)
    mod("atomics.cu").get_function("spin_lock_count")(3, 96, (out,))
    np.testing.assert_array_equal(out, 96)


def test_last_block_pattern(seed):
    x = rng.standard_normal(8 * 128).astype(f32)
    partial, done, total = np.zeros(8, f32), np.zeros(1, np.uint32), np.zeros(1, f32)
    mod("atomics.cu").get_function("last_block_sum")(8, 128, (x, partial, done, total))
    np.testing.assert_allclose(total[0], x.astype(np.float64).sum(), rtol=1e-4, atol=1e-4)
    assert done[0] == 8                                   # atomicInc(done, gridDim.x): 0, 1, ..., 8


# ------------------------------------------------------------------ races and the schedule
def test_missing_syncthreads_is_exposed_by_some_seed():
    n = 1000
    x = rng.standard_normal(n).astype(f32)
    ref = x + np.concatenate([[0], x[:-1]]) * (np.arange(n) % 256 != 0)
    racy = mod("races.cu").get_function("neighbour_sum_racy")
    good = mod("races.cu").get_function("neighbour_sum")
    wrong_seeds, good_results = [], []
    for s in [None, 1, 2, 3, 4]:
        with schedule_seed(s):
            out = np.zeros(n, f32)
            racy(4, 256, (x, out, i32(n)))
            if not np.array_equal(out, ref.astype(f32)):
                wrong_seeds.append(s)
            out = np.zeros(n, f32)
            good(4, 256, (x, out, i32(n)))
            good_results.append(out)
    # thread order happens to hide this race; random orders expose it
    assert None not in wrong_seeds and len(wrong_seeds) >= 1
    for r in good_results:
        np.testing.assert_array_equal(r, ref.astype(f32))


def test_missing_syncwarp_reads_poison():
    x = np.arange(32, dtype=np.int32)
    out = np.zeros(32, np.int32)
    mod("races.cu").get_function("warp_exchange_racy")(1, 32, (x, out))
    assert (out == -1).any()


def test_seed_api(monkeypatch):
    monkeypatch.setattr(emu, "_seed_override", emu._UNSET)
    monkeypatch.setenv("GPUNET_EMU_SEED", "17")
    assert emu.get_schedule_seed() == 17
    prev = set_schedule_seed(5)
    assert prev == 17 and emu.get_schedule_seed() == 5
    set_schedule_seed(None)
    assert emu.get_schedule_seed() is None
    with pytest.raises(TypeError):
        set_schedule_seed("x")


# ------------------------------------------------------------------ bugs reported with file:line
def test_barrier_divergence_early_exit():
    data = np.zeros(100, f32)
    with pytest.raises(KernelDeadlockError) as ei:
        mod("faults.cu").get_function("early_exit_barrier")(1, 128, (data, i32(100)))
    msg = str(ei.value)
    assert "barrier divergence" in msg and "early_exit_barrier" in msg
    assert f"faults.cu:{line_of('faults.cu', 'early_exit_barrier')}" in msg
    assert "exited" in msg and "(100,0,0)" in msg
    assert ei.value.line == line_of("faults.cu", "early_exit_barrier") and ei.value.block == (0, 0, 0)


def test_barrier_divergence_different_lines(seed):
    with pytest.raises(KernelDeadlockError) as ei:
        mod("faults.cu").get_function("split_barrier")(1, 32, (np.zeros(32, f32),))
    msg = str(ei.value)
    assert f"faults.cu:{line_of('faults.cu', 'split_a')}" in msg
    assert f"faults.cu:{line_of('faults.cu', 'split_b')}" in msg


def test_warp_collective_with_exited_lane(seed):
    with pytest.raises(KernelDeadlockError) as ei:
        mod("faults.cu").get_function("shuffle_after_exit")(1, 32, (np.zeros(32, f32), i32(20)))
    msg = str(ei.value)
    assert "__shfl_down_sync" in msg and "exited" in msg
    assert f"faults.cu:{line_of('faults.cu', 'shuffle_after_exit')}" in msg


def test_warp_collective_deadlocked_by_barrier():
    with pytest.raises(KernelDeadlockError) as ei:
        mod("faults.cu").get_function("shuffle_vs_barrier")(1, 32, (np.zeros(32, f32),))
    msg = str(ei.value)
    assert f"faults.cu:{line_of('faults.cu', 'shuffle_vs_barrier')}" in msg
    assert f"faults.cu:{line_of('faults.cu', 'shuffle_vs_barrier_sync')}" in msg


def test_warp_mask_must_contain_caller():
    with pytest.raises(KernelTrapError) as ei:
        mod("faults.cu").get_function("mask_without_self")(1, 32, (np.zeros(32, f32),))
    msg = str(ei.value)
    assert "not in its own mask 0x00000001" in msg
    assert f"faults.cu:{line_of('faults.cu', 'mask_without_self')}" in msg


def test_trap_names_thread():
    flags = np.zeros(64, np.int32)
    flags[37] = 1
    with pytest.raises(KernelTrapError) as ei:
        mod("faults.cu").get_function("trap_when")(2, 32, (flags,))
    msg = str(ei.value)
    assert f"faults.cu:{line_of('faults.cu', 'trap_when')}" in msg and "(5,0,0)" in msg and "(1,0,0)" in msg


def test_device_assert():
    src = 'extern "C" __global__ void k(const int* x) {\n  assert(x[threadIdx.x] >= 0);\n}\n'
    with pytest.raises(KernelTrapError, match=r"assert\.cu:2"):
        EmulatedModule(src, path="assert.cu").get_function("k")(1, 4, (np.array([0, 1, -1, 2], np.int32),))


def test_wild_write_becomes_exception_and_process_survives():
    data = np.zeros(4, f32)
    k = mod("faults.cu").get_function("write_at")
    with pytest.raises(KernelCrashError) as ei:
        k(1, 32, (data, i64(2**45)))              # 128 TiB away: never mapped
    msg = str(ei.value)
    assert "write_at" in msg and "invalid memory access" in msg
    assert f"faults.cu:{line_of('faults.cu', 'write_at')}" in msg      # located with addr2line
    k(1, 32, (data, i64(3)))                       # the module still works afterwards
    assert data[3] == 1.0


def test_stack_overflow_is_reported():
    sink = np.zeros(2, np.int32)
    with pytest.raises(KernelCrashError, match="stack overflow"):
        mod("faults.cu").get_function("stack_hog")(1, 1, (sink, i32(2000)))
    mod("faults.cu").get_function("stack_hog")(1, 1, (sink, i32(3)))


def test_check_mode_catches_off_by_one_and_copies_results(monkeypatch):
    monkeypatch.setenv("GPUNET_EMU_CHECK", "1")
    data = np.zeros(10, f32)
    k = mod("faults.cu").get_function("write_at")
    with pytest.raises(KernelCrashError) as ei:
        k(1, 32, (data, i64(10)))                 # one past the end: silent on a GPU, caught here
    assert "past the end of argument 0 'data'" in str(ei.value)
    k(1, 32, (data, i64(9)))
    assert data[9] == 1.0
    x = np.arange(100, dtype=f32)
    y = np.ones(100, f32)
    mod("geometry.cu").get_function("saxpy")(1, 128, (f32(2), x, y, i32(100)))
    np.testing.assert_array_equal(y, 2 * np.arange(100, dtype=f32) + 1)
    with pytest.raises(KernelDeadlockError):
        mod("faults.cu").get_function("early_exit_barrier")(1, 128, (np.zeros(100, f32), i32(100)))


def test_check_mode_timeout(monkeypatch):
    monkeypatch.setenv("GPUNET_EMU_CHECK", "1")
    monkeypatch.setenv("GPUNET_EMU_TIMEOUT", "1")
    with pytest.raises(KernelTimeoutError, match="spin_forever"):
        mod("faults.cu").get_function("spin_forever")(1, 1, (np.zeros(1, np.int32),))


# ------------------------------------------------------------------ launch API strictness
K_SAXPY = "saxpy(float a, const float* x, float* y, int n)"


@pytest.mark.parametrize("args,pattern", [
    ((2.0, np.ones(4, f32), np.ones(4, f32), i32(4)), r"argument 0 \('a'.*expected numpy\.float32, got Python float"),
    ((f32(2), np.ones(4, f32), np.ones(4, f32), 4), r"argument 3 \('n'.*expected numpy\.int32, got Python int"),
    ((f32(2), np.ones(4, f32), np.ones(4, f32), i64(4)), r"argument 3 \('n'.*expected numpy\.int32, got numpy\.int64"),
    ((f32(2), np.ones(4), np.ones(4, f32), i32(4)), r"argument 1 \('x'.*const float.*array of float32, got .*float64"),
    ((f32(2), np.ones(4, f32), f32(1), i32(4)), r"argument 2 \('y'.*expected a NumPy array"),
    ((f32(2), np.ones(4, f32), np.ones(4, f32), np.ones(1, np.int32)), r"argument 3.*scalar"),
    ((f32(2), np.ones(4, f32), np.ones(4, f32)), r"takes 4 arguments .*got 3"),
    ((f32(2), np.ones(8, f32)[::2], np.ones(4, f32), i32(4)), r"C-contiguous"),
])
def test_strict_argument_types(args, pattern):
    k = mod("geometry.cu").get_function("saxpy")
    with pytest.raises(TypeError, match=pattern) as ei:
        k(1, 32, args)
    assert "saxpy" in str(ei.value)


def test_vector_pointer_arguments():
    k = mod("geometry.cu").get_function("scale_float4")
    v = np.arange(40, dtype=f32)
    k(1, 32, (v, f32(2), i32(10)))
    np.testing.assert_array_equal(v, 2 * np.arange(40, dtype=f32))
    with pytest.raises(TypeError, match="divisible by 4"):
        k(1, 32, (np.zeros(42, f32), f32(2), i32(10)))
    with pytest.raises(TypeError, match="16-byte aligned"):
        k(1, 32, (np.zeros(41, f32)[1:], f32(2), i32(10)))
    with pytest.raises(TypeError, match="float32"):
        k(1, 32, (np.zeros(40, np.float64), f32(2), i32(10)))


def test_readonly_array_for_writable_pointer():
    y = np.ones(4, f32)
    y.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        mod("geometry.cu").get_function("saxpy")(1, 32, (f32(1), np.ones(4, f32), y, i32(4)))


@pytest.mark.parametrize("grid,block,shared,pattern", [
    (1, 0, 0, "must be >= 1"), (0, 32, 0, "must be >= 1"), (1, 1025, 0, "block.x=1025"),
    (1, (32, 33), 0, "1056 threads"), (1, (1, 1, 65), 0, "block.z=65"), ((1, 65536), 32, 0, "grid.y=65536"),
    ((1, 1, 1, 1), 32, 0, "1 to 3 ints"), (1, 32, 48 * 1024 + 4, "exceeds the limit"), (1, 32, -1, "non-negative"),
    (1.0, 32, 0, "int or a tuple"),
])
def test_invalid_launch_configuration(grid, block, shared, pattern):
    k = mod("geometry.cu").get_function("saxpy")
    with pytest.raises(KernelLaunchError, match=pattern):
        k(grid, block, (f32(1), np.ones(4, f32), np.ones(4, f32), i32(4)), shared_mem=shared)


def test_launch_bounds_enforced():
    src = 'extern "C" __global__ void __launch_bounds__(2 * 64) k(float* x) { x[threadIdx.x] = 1.0f; }\n'
    k = EmulatedModule(src, path="lb.cu").get_function("k")
    assert k.max_threads_per_block == 128
    k(1, 128, (np.zeros(128, f32),))
    with pytest.raises(KernelLaunchError, match="__launch_bounds__"):
        k(1, 129, (np.zeros(129, f32),))


def test_get_function_errors():
    m = mod("geometry.cu")
    with pytest.raises(KeyError) as ei:
        m.get_function("no_such_kernel")
    assert "no_such_kernel" in str(ei.value) and "saxpy" in str(ei.value) and "record_ids" in str(ei.value)
    src = '__global__ void mangled(float* x) { x[0] = 1.0f; }\nextern "C" __global__ void plain(float* x) {}\n'
    m2 = EmulatedModule(src, path="mangled.cu")
    assert m2.kernel_names == ["plain"]
    with pytest.raises(KernelNotFoundError, match='extern "C"'):
        m2.get_function("mangled")


# ------------------------------------------------------------------ compile errors and the cache
def test_compile_error_shows_file_and_line():
    src = ('#include "emu_helpers.cuh"\n'
           '\n'
           'extern "C" __global__ void broken(float* x) {\n'
           '    x[threadIdx.x] = undefined_name;\n'
           '}\n')
    with pytest.raises(EmulatorCompileError) as ei:
        EmulatedModule(src, path=str(KDIR / "broken_inline.cu"), options=OPTS)
    msg = str(ei.value)
    assert "broken_inline.cu:4" in msg and "undefined_name" in msg
    assert ei.value.line == 4


def test_nvrtc_dialect_is_enforced():
    with pytest.raises(EmulatorCompileError, match="no standard library headers"):
        EmulatedModule('#include <cstdint>\nextern "C" __global__ void k(int* x) {}\n', path="std.cu")
    with pytest.raises(EmulatorCompileError, match=r"inf\.cu:1.*INFINITY|__int_as_float\(0xff800000\)"):
        EmulatedModule('extern "C" __global__ void k(float* x) { x[0] = -INFINITY; }\n', path="inf.cu")
    with pytest.raises(EmulatorCompileError, match="cannot find include"):
        EmulatedModule('#include "nope.cuh"\n', path="inc.cu")


def test_module_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(tmp_path))
    src = (KDIR / "races.cu").read_text() + "\n// cache test\n"
    t0 = time.perf_counter()
    m1 = EmulatedModule(src, path=str(KDIR / "races.cu"), options=OPTS)
    cold = time.perf_counter() - t0
    sos = list((tmp_path / "emu").glob("*.so"))
    assert len(sos) == 1 and list((tmp_path / "emu").glob("*.json"))
    mtime = sos[0].stat().st_mtime_ns
    assert EmulatedModule(src, path=str(KDIR / "races.cu"), options=OPTS)._loaded is m1._loaded   # in-process memo
    emu.clear_memory_cache()
    t0 = time.perf_counter()
    m2 = EmulatedModule(src, path=str(KDIR / "races.cu"), options=OPTS)
    warm = time.perf_counter() - t0
    assert sos[0].stat().st_mtime_ns == mtime and list((tmp_path / "emu").glob("*.so")) == sos
    assert warm < 0.25 and warm < cold / 4, (cold, warm)
    out = np.zeros(10, f32)
    m2.get_function("neighbour_sum")(1, 32, (np.ones(10, f32), out, i32(10)))
    assert out[0] == 1 and out[1] == 2
    # another option set is another module
    EmulatedModule(src, path=str(KDIR / "races.cu"), options=OPTS + ("-DX=1",))
    assert len(list((tmp_path / "emu").glob("*.so"))) == 2
    assert not list((tmp_path / "emu").glob("build-*"))                     # temporary dirs cleaned up


def test_ucontext_fallback(tmp_path, monkeypatch):
    """The portable fiber backend (used off x86-64) gives the same results and diagnostics."""
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPUNET_EMU_UCONTEXT", "1")
    m = EmulatedModule(path=str(KDIR / "shared.cu"), options=OPTS)
    x = rng.standard_normal(2048).astype(f32)
    out = np.zeros(8, f32)
    with schedule_seed(3):
        m.get_function("reduce_tree_shfl")(8, 256, (x, out, i32(2048)))
    np.testing.assert_allclose(out, x.reshape(8, 256).sum(axis=1), rtol=1e-5, atol=1e-5)
    faults = EmulatedModule(path=str(KDIR / "faults.cu"), options=OPTS)
    with pytest.raises(KernelDeadlockError, match="barrier divergence"):
        faults.get_function("early_exit_barrier")(1, 128, (np.zeros(100, f32), i32(100)))


# ------------------------------------------------------------------ performance
def test_performance_100_blocks_of_256(capsys):
    """A shared-memory tree reduction with barriers plus a warp-shuffle tail over 100 x 256 threads."""
    n = 100 * 256
    x = rng.standard_normal(n).astype(f32)
    out = np.zeros(100, f32)
    k = mod("shared.cu").get_function("reduce_tree_shfl")
    k(100, 256, (x, out, i32(n)))
    best = {}
    for s in (None, 7):
        with schedule_seed(s):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                k(100, 256, (x, out, i32(n)))
                ts.append(time.perf_counter() - t0)
            best[s] = min(ts)
    np.testing.assert_allclose(out, x.reshape(100, 256).sum(axis=1), rtol=1e-5, atol=1e-5)
    with capsys.disabled():
        print(f"\n[emulator] 100 blocks x 256 threads reduction: {best[None] * 1e3:.1f} ms (thread order), "
              f"{best[7] * 1e3:.1f} ms (seeded)")
    assert best[None] < 0.5 and best[7] < 0.5


# ------------------------------------------------------------------ the test kernels are real CUDA
KERNEL_FILES = sorted(glob.glob(str(KDIR / "*.cu")))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_kernels_compile_with_nvcc(tmp_path):
    def compile_one(f):
        out = tmp_path / (Path(f).stem + ".ptx")
        return f, subprocess.run(["nvcc", "-std=c++17", "-ptx", "-arch=sm_90", f"-I{KDIR}", f, "-o", str(out)],
                                 capture_output=True, text=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(compile_one, KERNEL_FILES))
    failed = [(f, r.stderr) for f, r in results if r.returncode != 0]
    assert not failed, failed


def _nvrtc():
    try:
        import nvidia.cuda_nvrtc as pkg
    except ImportError:
        return None
    libs = [p for d in pkg.__path__ for p in glob.glob(os.path.join(d, "lib", "libnvrtc.so*"))
            if "builtins" not in p and ".alt." not in p]
    return ctypes.CDLL(libs[0]) if libs else None


def test_kernels_compile_with_nvrtc():
    """NVRTC is what CuPy uses: no standard headers, its own predefined names."""
    lib = _nvrtc()
    if lib is None:
        pytest.skip("NVRTC (nvidia-cuda-nvrtc) is not installed")
    for f in KERNEL_FILES:
        prog = ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(prog), Path(f).read_bytes(), os.path.basename(f).encode(),
                                      0, None, None) == 0
        opts = [f"-I{KDIR}".encode(), b"-std=c++17", b"--gpu-architecture=compute_90"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        assert rc == 0, (f, log.value.decode())
