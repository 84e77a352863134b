"""Device parity (gpunet.parity, `gpunet parity`): the check itself, then the devices.

The check has to be right in both directions, so besides the real devices it runs against stand-in
backends built from NumpyOps:
- NumPy against itself must give exactly 0 everywhere (same code, same inputs, same order).
- `ReorderedOps` does the same math with the sums in another order (channels and batch reversed):
  float32 rounding differs exactly as it does between a tiled GEMM and BLAS, and it must PASS in
  float32 (the tolerances are not too tight) and in float64.
- `buggy(...)` injects one realistic kernel bug each (biased running variance, ties to the last
  maximum, a dW reduction that skips a sample, a dropout mask that ignores its counter); each must
  FAIL, on the row that localises it (the tolerances are not too loose).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gpunet import nn, onednn
from gpunet.backend import Backend, get_backend
from gpunet.parity import TOLERANCES, ParityReport, ParityRow, capture, diff, run_parity
from gpunet.ops.numpy import NumpyOps


def _c(a):
    return np.ascontiguousarray(a)


class ReorderedOps(NumpyOps):
    """NumpyOps with every reduction in a different order: mathematically identical results, different
    float rounding (the legitimate kind of difference between two devices)."""

    def conv2d_forward(self, x, w, b, stride, padding, relu, keep_layout=False):   # NCHW engine: no layout
        # batch and both channel axes reversed: the sum over input channels runs backwards
        y, ctx = super().conv2d_forward(_c(x[::-1, ::-1]), _c(w[::-1, ::-1]), None if b is None else _c(b[::-1]),
                                        stride, padding, relu)
        return _c(y[::-1, ::-1]), ctx

    def conv2d_backward(self, dy, ctx, input_grad=True):
        dx, dw, db = super().conv2d_backward(_c(dy[::-1, ::-1]), ctx)  # dW and db sum the batch backwards
        return _c(dx[::-1, ::-1]), _c(dw[::-1, ::-1]), None if db is None else _c(db[::-1])

    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        y, mean, invstd = super().batch_norm_train(_c(x[::-1]), gamma, beta, running_mean, running_var,
                                                   momentum, eps)
        return _c(y[::-1]), mean, invstd

    def batch_norm_backward(self, dy, x, gamma, mean, invstd):
        dx, dgamma, dbeta = super().batch_norm_backward(_c(dy[::-1]), _c(x[::-1]), gamma, mean, invstd)
        return _c(dx[::-1]), dgamma, dbeta


class BiasedRunningVar(NumpyOps):
    """Bug: running_var updated with the biased batch variance (PyTorch uses n/(n-1))."""

    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        before = running_var.copy()
        out = super().batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        running_var[...] = (1 - momentum) * before + momentum * x.var(axis=axes)
        return out


class TiesToLastMax(NumpyOps):
    """Bug: max-pool ties go to the LAST maximum of the window (`>=` instead of `>` in a kernel).
    Implemented for the models' non-overlapping, unpadded windows on even sizes by flipping the planes."""

    def max_pool2d_forward(self, x, kernel, stride, padding):
        h, w = x.shape[2:]
        y, argmax = super().max_pool2d_forward(_c(x[:, :, ::-1, ::-1]), kernel, stride, padding)
        r, c = argmax // w, argmax % w
        return _c(y[:, :, ::-1, ::-1]), _c(((h - 1 - r) * w + (w - 1 - c))[:, :, ::-1, ::-1]).astype(np.int32)


class DwSkipsLastSample(NumpyOps):
    """Bug: the dW reduction over the batch stops one sample short (an off-by-one loop bound)."""

    def conv2d_forward(self, x, w, b, stride, padding, relu, keep_layout=False):   # NCHW engine: no layout
        y, ctx = super().conv2d_forward(x, w, b, stride, padding, relu)
        _, spare = super().conv2d_forward(x, w, b, stride, padding, relu)  # a ctx for the second backward
        return y, (ctx, spare)

    def conv2d_backward(self, dy, ctx, input_grad=True):
        dx, _, db = super().conv2d_backward(dy, ctx[0])
        dy_short = dy.copy()
        dy_short[-1] = 0
        _, dw, _ = super().conv2d_backward(dy_short, ctx[1])
        return dx, dw, db


class DropoutIgnoresCounter(NumpyOps):
    """Bug: the dropout mask ignores its counter, so every step drops the same units."""

    def dropout_mask(self, shape, p, seed, counter, dtype):
        return super().dropout_mask(shape, p, seed, 0, dtype)


class OneReluKink(NumpyOps):
    """Not a bug but what rounding does now and then: the smallest positive output of each fused conv+ReLU
    comes out as exactly 0 (its pre-activation rounded to the other side of the kink)."""

    def conv2d_forward(self, x, w, b, stride, padding, relu, keep_layout=False):   # NCHW engine: no layout
        y, ctx = super().conv2d_forward(x, w, b, stride, padding, relu)
        if relu:
            pos = np.flatnonzero(y > 0)
            y.reshape(-1)[pos[np.argmin(y.reshape(-1)[pos])]] = 0
        return y, ctx


def fake_backend(ops_class, name=None) -> Backend:
    """A NumPy-array backend whose hot ops are `ops_class` (what the emulator is, with our kernels)."""
    return Backend(name or ops_class.__name__, np, lambda backend: ops_class())


# --- the comparison itself ------------------------------------------------------------------------

def test_diff_is_normalised_by_the_largest_reference_magnitude():
    ref = np.array([100.0, 1e-3, -2.0])
    got = np.array([100.0, 2e-3, -2.0])
    max_abs, max_rel, scale = diff(ref, got)
    assert max_abs == pytest.approx(1e-3) and scale == 100.0
    assert max_rel == pytest.approx(1e-5)  # the tiny element's 100 % error does not dominate
    assert diff(np.zeros(3), np.zeros(3)) == (0.0, 0.0, 0.0)
    assert math.isfinite(diff(np.zeros(3), np.full(3, 1e-9))[1])  # all-zero reference: finite
    assert diff(np.ones(3), np.ones(4))[0] == math.inf
    assert math.isnan(diff(np.ones(3), np.array([1.0, np.nan, 1.0]))[0])


def test_capture_records_every_module_and_leaves_no_trace():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    store = {}
    with capture(model, store):
        y = model(x)
        dx = model.backward(np.ones_like(y))
    assert set(store) == {(p, q) for p in ("(model)", "0", "1", "2") for q in ("output", "grad_input")}
    np.testing.assert_array_equal(store[("(model)", "output")], y)
    np.testing.assert_array_equal(store[("(model)", "grad_input")], dx)
    assert store[("(model)", "output")] is not y  # host copies, not the live arrays
    for m in model.modules():
        assert "forward" not in m.__dict__ and "backward" not in m.__dict__
    with pytest.raises(RuntimeError):
        with capture(model, {}):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in model.modules())


# --- NumPy against itself: exactly zero -----------------------------------------------------------

@pytest.mark.parametrize("model", ["cnn", "resnet-small", "mlp", "lenet"])
def test_numpy_against_numpy_is_exact(model):
    report = run_parity(model, "numpy", steps=2, batch_size=8, cpu_engine="numpy")
    assert report.passed, report.table(only_failures=True)
    assert all(r.max_abs == 0 for r in report.rows), [r for r in report.rows if r.max_abs != 0]
    quantities = {r.quantity for r in report.rows}
    assert {"loss", "output", "grad_input", "weight.grad", "weight"} <= quantities
    if model in ("cnn", "resnet-small"):
        assert {"running_mean", "running_var", "num_batches_tracked"} <= quantities
    assert report.losses["reference"] == report.losses["device"]


def test_numpy_against_numpy_is_exact_with_adam_float64_and_a_factory():
    def factory(in_shape, num_classes):
        c = in_shape[0]
        return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1, activation="relu"), nn.BatchNorm2d(4),
                             nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.3),
                             nn.Linear(4 * (in_shape[1] // 2) * (in_shape[2] // 2), num_classes))
    report = run_parity(factory, "numpy", steps=3, batch_size=6, dtype="float64", optimizer="adam",
                        in_shape=(2, 6, 6), num_classes=3, cpu_engine="numpy")
    assert report.data.startswith("random") and report.model == "factory" and report.dtype == "float64"
    assert report.passed and all(r.max_abs == 0 for r in report.rows)


# --- legitimate rounding differences pass, bugs fail ----------------------------------------------

@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_reordered_sums_pass_in_float32(model, optimizer):
    report = run_parity(model, fake_backend(ReorderedOps), steps=4, optimizer=optimizer)
    assert report.passed, report.table(only_failures=True)
    assert any(r.max_abs > 0 for r in report.rows), "the reordering should change some float32 roundings"
    worst = report.worst()
    assert worst.ratio < 1 / 3, f"less than 3x margin: {worst}"  # not marginal


def test_reordered_sums_pass_in_float64_at_1e10_scale():
    report = run_parity("cnn", fake_backend(ReorderedOps), steps=3, dtype="float64")
    assert report.passed, report.table(only_failures=True)
    assert max(r.tol for r in report.rows) <= 1e-9
    assert max(r.max_rel for r in report.rows) < 1e-12


def _failing(report, step=None):
    return [r for r in report.failures if step is None or r.step == step]


@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_biased_running_var_fails_on_running_var_only(model):
    # n/(n-1) is a 1e-3 (cnn: n = 16*8*8) to 2e-2 (resnet's 2x2 stage) effect on the batch term
    report = run_parity(model, fake_backend(BiasedRunningVar), steps=2)
    assert not report.passed, report.table()
    assert {r.quantity for r in _failing(report, 1)} == {"running_var"}
    assert report.summary().startswith("FAIL")


def test_ties_to_the_last_max_fail_in_the_max_pool_backward():
    report = run_parity("cnn", fake_backend(TiesToLastMax), steps=1)
    rows = {(r.layer, r.quantity): r for r in report.rows}
    pool = rows[("2", "grad_input")]
    assert report.rows[[r.layer for r in report.rows].index("2")].module == "MaxPool2d"
    assert not pool.passed and pool.max_rel > 0.01
    assert rows[("2", "output")].max_abs == 0  # tied values: the forward cannot show the bug
    downstream = [r for r in report.rows if r.layer.split(".")[0] in ("3", "4", "5")]
    assert downstream and all(r.passed for r in downstream)  # everything after the pool agrees


@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_dw_reduction_off_by_one_fails_on_conv_weight_gradients(model):
    report = run_parity(model, fake_backend(DwSkipsLastSample), steps=1)
    bad = _failing(report, 1)
    assert {r.quantity for r in bad} <= {"weight.grad", "weight"} and {r.module for r in bad} == {"Conv2d"}
    assert any(r.quantity == "weight.grad" for r in bad)


def test_dropout_mask_ignoring_its_counter_fails_from_the_second_step():
    report = run_parity("mlp", fake_backend(DropoutIgnoresCounter), steps=2)
    assert not _failing(report, 1)  # counter 0 on both devices at the first step
    assert any(r.module == "Dropout" and r.quantity == "output" for r in _failing(report, 2))


def test_tol_scale_and_tolerance_overrides():
    loose = run_parity("cnn", fake_backend(BiasedRunningVar), steps=1, tol_scale=1e4)
    assert loose.passed
    assert all(r.tol == pytest.approx(TOLERANCES["float32"][r.kind] * 1e4) for r in loose.rows if r.tol)
    strict = run_parity("cnn", fake_backend(ReorderedOps), steps=1, tolerances={"activation": 1e-12})
    assert any(not r.passed for r in strict.rows if r.kind == "activation")
    with pytest.raises(ValueError, match="unknown tolerance kinds"):
        run_parity("cnn", "numpy", steps=1, tolerances={"weights": 1.0})


def test_kink_flips_are_detected_and_explained():
    report = run_parity("cnn", fake_backend(OneReluKink), steps=1)
    assert report.kink_flips == {1: {"0 Conv2d": 1, "3.body.0 Conv2d": 1}}  # the two fused conv+ReLU
    # a failure that starts where only a kink flipped gets the note; one with a forward failure first does not
    hinted = ParityReport("cnn", "dev", "numpy", "float32", 5, 16, 0, "momentum", 0.01, "digits",
                          kink_flips={4: {"3 Residual": 2}},
                          rows=[ParityRow("0", "Conv2d", "output", "activation", 0, 0, 1e-4, 1e-8, True, 1, 1.0),
                                ParityRow("0", "Conv2d", "weight.grad", "grad", 1, 0.1, 5e-4, 1e-8, False, 5, 1.0)])
    assert "note: at step 4" in hinted.summary() and "3 Residual: 2" in hinted.summary()
    assert "--lockstep" in hinted.summary()
    hinted.rows[0] = ParityRow("0", "Conv2d", "output", "activation", 1, 0.1, 1e-4, 1e-8, False, 2, 1.0)
    assert "note:" not in hinted.summary()


def test_lockstep_restarts_every_step_from_the_reference_state():
    free = run_parity("cnn", fake_backend(DwSkipsLastSample), steps=4)
    lock = run_parity("cnn", fake_backend(DwSkipsLastSample), steps=4, lockstep=True)
    assert lock.lockstep and "lockstep" in lock.summary()
    assert all(r.tol == TOLERANCES["float32"][r.kind] for r in lock.rows if r.tol)  # no growth
    assert [h["step"] for h in lock.history] == [1, 2, 3, 4]
    # free-running, the wrong weight updates pile up (with momentum); in lockstep each step starts over
    assert free.history[-1]["param"] > 3 * free.history[0]["param"]
    assert lock.history[-1]["param"] < 2 * lock.history[0]["param"]
    assert run_parity("resnet-small", fake_backend(ReorderedOps), steps=4, lockstep=True).passed


# --- the report -----------------------------------------------------------------------------------

def test_report_rows_table_and_json(tmp_path):
    report = run_parity("cnn", fake_backend(ReorderedOps, "reordered"), steps=2, batch_size=8)
    assert isinstance(report, ParityReport) and isinstance(report.rows[0], ParityRow)
    row = report.rows[0]
    assert (row.layer, row.quantity, row.kind) == ("(loss)", "loss", "loss")
    assert report.rows[1].layer == "(model)" and report.rows[1].module == "Sequential"
    for r in report.rows:
        assert r.passed == (r.max_rel <= r.tol or r.max_abs <= r.atol) == (r.ratio <= 1)
        assert 1 <= r.step <= 2
    table = report.table()
    assert "max_abs" in table and "0 Conv2d" in table and "running_var" in table and "PASS" in table
    assert report.table(only_failures=True).count("\n") == 1  # header only
    path = report.save_json(tmp_path / "sub" / "parity.json")
    data = json.loads(path.read_text())
    assert data["passed"] is True and data["device"] == "reordered" and data["reference"] == "numpy"
    assert len(data["rows"]) == len(report.rows)
    assert set(data["rows"][0]) >= {"layer", "quantity", "max_abs", "max_rel", "tol", "passed"}
    assert data["tolerances"]["relative_at_step_1"] == TOLERANCES["float32"]
    assert set(report.max_diffs()) == {"loss", "activation", "grad_input", "grad", "param", "buffer"}


def test_run_leaves_the_shared_generator_alone():
    host = get_backend("numpy")
    host.seed(123)
    expected = np.random.default_rng(123).integers(0, 2**31, 4)
    run_parity("mlp", "numpy", steps=1, batch_size=4)
    np.testing.assert_array_equal(host.rng.integers(0, 2**31, 4), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        run_parity("cnn", "numpy", steps=0)
    with pytest.raises(ValueError, match="batch size"):
        run_parity("cnn", "numpy", steps=1, batch_size=1)
    with pytest.raises(ValueError, match="dtype"):
        run_parity("cnn", "numpy", steps=1, dtype="float16")
    with pytest.raises(ValueError, match="optimizer"):
        run_parity("cnn", "numpy", steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown model"):
        run_parity("vgg19", "numpy", steps=1)
    with pytest.raises(TypeError, match="not a gpunet.nn.Module"):
        run_parity(lambda s, c: object(), "numpy", steps=1)


# --- the command ----------------------------------------------------------------------------------

def test_cli_passes_on_cpu_and_writes_json(tmp_path, capsys):
    from gpunet.cli.main import main
    out = tmp_path / "p.json"
    rc = main(["parity", "--device", "cpu", "--steps", "1", "--batch-size", "8", "--quiet", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "PASS: all" in text and "layer" in text and "running_var" in text
    assert json.loads(out.read_text())["passed"] is True


def test_cli_exits_nonzero_on_failure(monkeypatch, capsys):
    import gpunet.parity
    from gpunet.cli.main import main
    monkeypatch.setattr(gpunet.parity, "resolve_device", lambda device, **_: fake_backend(DwSkipsLastSample))
    rc = main(["parity", "--device", "emulator", "--steps", "1", "--quiet", "--failures-only"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL:" in text and "weight.grad" in text and "PASS" not in text.split("FAIL:")[0]


def test_cli_help_states_the_tolerances(capsys):
    from gpunet.cli.main import main
    with pytest.raises(SystemExit):
        main(["parity", "--help"])
    text = capsys.readouterr().out
    assert "float32:" in text and "float64:" in text and "docs/parity.md" in text


# --- the CPU backend's oneDNN engine against the NumPy engine (docs/onednn.md) --------------------------

needs_onednn = pytest.mark.skipif(not onednn.available(), reason=f"{onednn.status_line()} (pip install 'gpunet[cpu]')")


@needs_onednn
@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_onednn_engine_trains_like_the_numpy_engine_float32(model):
    report = run_parity(model, "cpu", steps=2, batch_size=8, cpu_engine="onednn")
    assert report.passed, report.table(only_failures=True)
    assert report.device == "cpu (engine onednn)" and report.reference == "numpy"
    assert "cpu (engine onednn) vs numpy" in report.summary()
    # step 1 starts from identical weights: a difference there is oneDNN's own sums (it really ran)
    assert report.history[0]["activation"] > 0
    assert any(r.max_abs > 0 for r in report.rows if r.module == "Conv2d" and r.quantity == "output")
    assert report.worst().ratio < 0.5, f"parity holds with little margin: {report.worst()}"


@needs_onednn
@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_onednn_engine_float64_is_exact(model):
    """oneDNN has no f64: on the onednn engine every float64 op falls back to NumPy's code, bit for bit."""
    report = run_parity(model, "cpu", steps=2, batch_size=8, dtype="float64", cpu_engine="onednn")
    assert report.device == "cpu (engine onednn)"
    assert report.passed and all(r.max_abs == 0 for r in report.rows), [r for r in report.rows if r.max_abs]
    assert report.losses["reference"] == report.losses["device"]


@needs_onednn
def test_the_reference_is_the_numpy_engine_whatever_the_environment_says(monkeypatch):
    monkeypatch.setenv("GPUNET_CPU_ENGINE", "onednn")
    report = run_parity("cnn", "cpu", steps=1, batch_size=8)   # the compared side follows the variable
    assert report.reference == "numpy" and report.device == "cpu (engine onednn)"
    assert any(r.max_abs > 0 for r in report.rows)
    monkeypatch.setenv("GPUNET_CPU_ENGINE", "numpy")
    report = run_parity("cnn", "cpu", steps=1, batch_size=8)
    assert report.device == "numpy" and all(r.max_abs == 0 for r in report.rows)


@needs_onednn
def test_cli_compares_the_onednn_engine(capsys):
    from gpunet.cli.main import main
    rc = main(["parity", "--device", "cpu", "--cpu-engine", "onednn", "--steps", "1", "--batch-size", "8", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "PASS: all" in text and "cpu (engine onednn) vs numpy" in text


def test_cpu_engine_is_for_the_cpu_device_only(monkeypatch, capsys):
    import gpunet.backend as backend_mod
    from gpunet.cli.main import main
    from gpunet.parity import resolve_device
    assert main(["parity", "--device", "emulator", "--cpu-engine", "numpy", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpunet parity: error: parity: a CPU engine (cpu_engine='numpy', --cpu-engine) applies "
                          "to the CPU device only, but device 'emulator' is emulator") and "\n" not in err
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    monkeypatch.setattr(backend_mod, "cuda_status", lambda: (False, "no GPU here"))
    with pytest.raises(ValueError, match=r"device 'auto' is emulator \(no usable GPU, and no_gpu='emulator'"):
        resolve_device("auto", cpu_engine="numpy")
    assert resolve_device("auto", no_gpu="numpy", cpu_engine="numpy") is get_backend("cpu", cpu_engine="numpy")
    with pytest.raises(ValueError, match="not to a given Backend"):
        resolve_device(get_backend("cpu", cpu_engine="numpy"), cpu_engine="numpy")


def test_cli_onednn_unavailable_says_why(tmp_path):
    """In a subprocess: the library is loaded (or not) once per process."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("GPUNET_DEBUG", "GPUNET_CPU_ENGINE")}
    env["GPUNET_ONEDNN_LIB"] = str(tmp_path / "missing.so")
    proc = subprocess.run([sys.executable, "-m", "gpunet.cli.main", "parity", "--device", "cpu", "--cpu-engine",
                           "onednn", "--quiet"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"gpunet parity: error: CPU engine 'onednn' (requested 'onednn') is unusable: GPUNET_ONEDNN_LIB="
        f"{tmp_path / 'missing.so'}: no such file; install it with pip install 'gpunet[cpu]', or choose "
        "GPUNET_CPU_ENGINE=numpy"]


# --- the real devices -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_device_trains_like_numpy_float32(device_backend, model):
    report = run_parity(model, device_backend, steps=3)
    assert report.passed, report.table(only_failures=True)
    assert any(r.max_abs > 0 for r in report.rows), "identical to the last bit: is the device really running?"
    assert report.worst().ratio < 0.5, f"parity holds with little margin: {report.worst()}"


@pytest.mark.parametrize("model", ["cnn", "resnet-small"])
def test_device_trains_like_numpy_float64(device_backend, model):
    report = run_parity(model, device_backend, steps=2, dtype="float64")
    assert report.passed, report.table(only_failures=True)
    assert max(r.max_rel for r in report.rows) < 1e-12


def test_device_long_run_in_lockstep(device_backend):
    # free-running, float32 training drifts apart (after ~17 steps a ReLU input crosses 0 on one side);
    # lockstep checks every step of a long run from identical state
    report = run_parity("resnet-small", device_backend, steps=12, lockstep=True)
    assert report.passed, report.table(only_failures=True) + "\n" + report.summary()


def test_device_with_adam(device_backend):
    report = run_parity("resnet-small", device_backend, steps=3, optimizer="adam")
    assert report.passed, report.table(only_failures=True)


def test_device_dropout_masks_are_bit_identical(device_backend):
    report = run_parity("mlp", device_backend, steps=2)
    dropout = [r for r in report.rows if r.module == "Dropout"]
    assert dropout and all(r.max_abs == 0 for r in dropout), dropout


def test_cli_on_the_device(device_backend, capsys):
    from gpunet.cli.main import main
    flag = {"cupy": "cuda"}.get(device_backend.name, device_backend.name)
    rc = main(["parity", "--device", flag, "--steps", "1", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"{device_backend.name} vs numpy" in text and "PASS: all" in text


def test_auto_means_what_it_means_everywhere_and_the_no_gpu_fallback_is_explicit(monkeypatch):
    """"auto" is gpunet.backend's (CUDA when usable, GPUNET_DEVICE first); only when it finds no GPU does
    parity compare `no_gpu` instead of NumPy with itself."""
    import gpunet.backend as backend_mod
    from gpunet.parity import resolve_device
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    monkeypatch.setattr(backend_mod, "cuda_status", lambda: (False, "no GPU here"))
    assert resolve_device("auto").name == "emulator"
    assert resolve_device(None, no_gpu="numpy").name == "numpy"
    assert resolve_device("cpu").name == "numpy" and resolve_device("emu").name == "emulator"
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")              # an explicit choice, not a missing GPU
    assert resolve_device("auto").name == "numpy"
    be, why = backend_mod.select_backend("auto")
    assert be.name == "numpy" and why == "GPUNET_DEVICE='cpu'"
