"""gpunet.bench and `gpunet bench`: the harness runs end to end (with and without PyTorch), writes its
outputs, and its PyTorch side computes what the gpunet side computes. No timing is asserted."""
import json
import sys

import numpy as np
import pytest

from gpunet.bench import format_table, run_bench, write_outputs
from gpunet.bench.runner import CHECK_TOL, check_outputs, output_diffs, run_row, select_rows
from gpunet.bench.timing import measure
from gpunet.bench.workloads import Env, Row, full_rows, quick_rows
from gpunet.cli.main import main

GROUPS = {"conv", "batchnorm", "maxpool", "e2e", "memory"}


def _have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_quick_cli_writes_table_json_and_chart(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "sgemm 2048x2048" in printed
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# gpunet vs PyTorch")
    assert res["quick"] and res["device"] == "numpy"
    assert {r["group"] for r in res["rows"]} == GROUPS
    assert res["sgemm"]["numpy_gflops"] > 0
    m = res["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["numpy"]["version"] == np.__version__ and m["date"]
    assert "applied" in m["malloc"]  # the NumPy ops' malloc setup, made before any row runs
    for r in res["rows"]:
        assert r["errors"] == {}, (r["id"], r["errors"])
        assert r["gpunet"] is not None
    conv = [r for r in res["rows"] if r["group"] == "conv"]
    assert all(r["gflops"]["gpunet"] > 0 and r["pct_sgemm"]["gpunet"] > 0 for r in conv)
    if _have("torch"):
        assert m["torch"]["num_threads"] >= 1
        for r in res["rows"]:
            assert r["torch"] is not None and r["ratio"] > 0
            if r["group"] != "memory":  # both sides computed the same outputs from the same inputs
                assert r["check_l2_rel_diff"] <= 1e-4, (r["id"], r["check"])
        assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or not _have("matplotlib")


def test_quick_without_torch_runs_gpunet_rows_alone(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    res = run_bench("cpu", quick=True, reps=1)
    assert any("PyTorch is not installed" in n for n in res["notes"])
    assert res["machine"]["torch"] is None and "torch_gflops" not in res["sgemm"]
    assert {r["group"] for r in res["rows"]} == GROUPS
    for r in res["rows"]:
        assert r["errors"] == {} and r["gpunet"] is not None
        assert r["torch"] is None and r["ratio"] is None
    paths = write_outputs(res, tmp_path)
    assert "chart" not in paths and json.loads(paths["json"].read_text())["rows"]
    assert "no PyTorch" in format_table(res)


def test_only_selects_rows_by_substring_glob_and_group():
    rows = full_rows()
    assert len(rows) == len({r.id for r in rows})  # ids are unique
    assert {r.group for r in select_rows(rows, "batchnorm")} == {"batchnorm"}
    both = select_rows(rows, "maxpool,memory")
    assert {r.group for r in both} == {"maxpool", "memory"} and len(both) == 6
    fb = select_rows(rows, "conv*fwd-bwd")
    assert len(fb) == 7 and all(r.phase == "fwd+bwd" for r in fb)
    with pytest.raises(ValueError, match="matches no row"):
        select_rows(rows, "no-such-row")


def test_full_rows_cover_the_brief():
    rows = full_rows()
    conv = [r for r in rows if r.group == "conv"]
    assert len(conv) == 14 and {r.phase for r in conv} == {"fwd", "fwd+bwd"}
    assert sum(1 for r in conv if r.target_pct_sgemm) == 6  # three big 3x3 shapes, fwd and fwd+bwd
    fwd = {r.name: r.flops for r in conv if r.phase == "fwd"}
    assert fwd["conv N64 64->64 32x32 k3 s1 p1"] == 2 * 64 * 32 * 32 * 64 * 64 * 9
    assert fwd["conv N64 64->128 32x32 k3 s2 p1"] == 2 * 64 * 16 * 16 * 128 * 64 * 9
    assert all(r.flops == 3 * fwd[r.name] for r in conv if r.phase == "fwd+bwd")
    assert len([r for r in rows if r.group == "batchnorm"]) == 4
    assert len([r for r in rows if r.group == "maxpool"]) == 4
    assert {r.name for r in rows if r.group == "e2e"} == {"cnn 1x28x28 N128", "resnet-small 3x32x32 N64"}
    assert {r.group for r in quick_rows()} == GROUPS


def test_targets_are_per_device():
    """CPU rows are judged by issue 24's targets, GPU rows by issue 17's."""
    from gpunet.bench.workloads import target_ratio
    by_id = {r.id: r for r in full_rows()}
    wide, thin = by_id["conv-n64-64-to-64-32x32-k3-s1-p1-fwd-bwd"], by_id["conv-n64-3-to-64-32x32-k3-s1-p1-fwd-bwd"]
    one = by_id["conv-n64-256-to-64-16x16-k1-s1-p0-fwd-bwd"]
    assert [target_ratio(r, "cpu") for r in (wide, thin, one)] == [1.05, 1.05, 1.05]
    assert [target_ratio(r, "gpu") for r in (wide, thin, one)] == [1.5, 1.0, 1.0]
    assert target_ratio(by_id["conv-n64-64-to-64-32x32-k3-s1-p1-fwd"], "cpu") == 1.05
    assert target_ratio(by_id["conv-n64-64-to-64-32x32-k3-s1-p1-fwd"], "gpu") is None
    step = by_id["cnn-1x28x28-n128-train-step"]
    assert target_ratio(step, "cpu") == 1.0 and target_ratio(step, "gpu") == 1.3
    assert target_ratio(by_id["cnn-1x28x28-n128-peak-memory"], "cpu") == 1.0
    for r in full_rows():
        if r.group in ("batchnorm", "maxpool"):
            assert target_ratio(r, "cpu") == 1.0 and target_ratio(r, "gpu") == 1.5


@pytest.mark.skipif(not _have("torch"), reason="needs PyTorch")
def test_isolated_runs_each_side_in_its_own_processes_and_merges(tmp_path):
    """`gpunet bench --isolated K`: K gpunet and K PyTorch processes, alternated; per row the median of the
    processes' medians, and the two processes' first outputs compared as in one process."""
    from gpunet.bench.isolated import run_isolated
    res = run_isolated("cpu", rounds=2, quick=True, reps=1, only="conv,memory")
    assert res["side"] == "isolated" and res["rounds"] == 2
    assert {r["group"] for r in res["rows"]} == {"conv", "memory"}
    for r in res["rows"]:
        assert r["errors"] == {}, r["errors"]
        if r["unit"] == "MiB":
            assert len(r["gpunet"]["process_peaks"]) == 2 and r["ratio"] > 0
            continue
        for side in ("gpunet", "torch"):
            meds = r[side]["process_medians"]
            assert len(meds) == 2 and r[side]["median"] == pytest.approx(float(np.median(meds)))
        assert r["ratio"] == pytest.approx(r["gpunet"]["median"] / r["torch"]["median"])
        assert r["check_l2_rel_diff"] <= 1e-4, r["check"]
    assert res["sgemm"]["numpy_gflops"] > 0 and res["sgemm"]["torch_gflops"] > 0
    assert res["machine"]["torch"]["num_threads"] >= 1
    paths = write_outputs(res, tmp_path)
    assert "isolated" in paths["markdown"].read_text()


def test_isolated_check_catches_sides_that_compute_different_things(tmp_path):
    """The merge compares the dumped outputs: a torch process that wrote other numbers fails the row."""
    from gpunet.bench.isolated import merge
    from gpunet.bench.runner import dump_outputs
    row = quick_rows()[0]
    dump_outputs(tmp_path / f"{row.id}.gpunet.npz", (np.ones(4, np.float32), np.arange(3.0)))
    dump_outputs(tmp_path / f"{row.id}.torch.npz", (np.ones(4, np.float32), np.arange(3.0)[::-1].copy()))
    side = {"median": 1.0, "q1": 1.0, "q3": 1.0, "iqr": 0.0, "min": 1.0, "reps": 1}
    run = {"rows": [{"id": row.id, "gpunet": side, "torch": side, "errors": {}}],
           "sgemm": {"n": 8}, "sgemm_runs": [{"numpy_gflops": 1.0, "torch_gflops": 1.0}]}
    merged, _ = merge({"gpunet": [run], "torch": [run]}, [row], tmp_path)
    assert merged[0]["check_l2_rel_diff"] > 0.5 and "outputs differ" in " ".join(merged[0]["misses"])


def test_failing_row_is_recorded_and_run_continues():
    def broken(env):
        raise RuntimeError("boom")
    row = Row("conv", "broken", "fwd", broken, {})
    env = Env(__import__("gpunet").get_backend("numpy"), None, "cpu", np.random.default_rng(0))
    res = run_row(row, env, reps=1, warmup=0)
    assert res["errors"] == {"setup": "RuntimeError: boom"} and res["gpunet"] is None


def test_measure_alternates_blocks_and_counts_calls():
    calls = []
    stats = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=5, warmup=1)
    # warm-up each, then two rounds of blocks, each block = 1 untimed call + its share of the 5 reps
    assert "".join(calls) == "a" + "b" + "aaaa" + "bbbb" + "aaa" + "bbb"
    assert stats["a"].reps == 5 and stats["a"].q1 <= stats["a"].median <= stats["a"].q3


def test_check_outputs_tolerates_an_isolated_outlier_but_not_a_different_computation():
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert check_outputs((a, a), (a, a)) == 0.0
    assert check_outputs(a * 1.1, a) == pytest.approx(0.1)  # relative to the reference (PyTorch) side
    assert check_outputs((a,), (a, a)) == float("inf")
    t = np.random.default_rng(0).standard_normal(100_000)
    g = t.copy()
    g[7] += 0.05 * np.abs(t).max()  # one element off, like a ReLU mask flipped by rounding
    d = output_diffs(g, t)
    assert d["max_rel"][0] == pytest.approx(0.05) and check_outputs(g, t) < CHECK_TOL
    assert check_outputs(t[::-1].copy(), t) > CHECK_TOL  # another computation entirely


@pytest.mark.parametrize("name,in_shape", [("cnn", (1, 28, 28)), ("resnet-small", (3, 32, 32)), ("lenet", (1, 28, 28))])
def test_torch_twin_has_same_architecture_and_weights(name, in_shape):
    torch = pytest.importorskip("torch")
    from gpunet.bench.torch_twin import torch_twin
    from gpunet.models import build_model
    model = build_model(name, in_shape, 10, seed=3)
    twin = torch_twin(model, torch)
    assert list(twin.state_dict()) == list(model.state_dict())
    x = np.random.default_rng(0).standard_normal((4,) + in_shape, dtype=np.float32)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(twin, mode)()
        with torch.no_grad():
            ref = twin(torch.from_numpy(x)).numpy()
        assert check_outputs(model(x), ref) < 1e-4, mode


def _script(name: str):
    """scripts/<name>.py loaded as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_summary_takes_the_median_ratio_per_row(tmp_path, capsys):
    """scripts/bench_summary.py: several runs of one commit, one row per id, the median of its ratios."""
    summary = _script("bench_summary")
    def run(name, ratios):
        rows = [{"id": f"r{i}", "name": f"row {i}", "phase": "fwd", "unit": "ms", "ratio": r,
                 "target": {"max_ratio": 1.5}} for i, r in enumerate(ratios)]
        rows.append({"id": "mem", "name": "memory", "phase": "peak memory", "unit": "MiB", "ratio": 0.7})
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"rows": rows, "machine": {"git": {"commit": "abc"}}}))
        return str(d)
    dirs = [run("a", [1.0, 2.0]), run("b", [3.0, None]), run("c", [2.0, 4.0])]
    assert summary.main(dirs + ["--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| row 0 fwd | 1.00 | 3.00 | 2.00 | 2.00 | <=1.5x |" in out
    assert "| row 1 fwd | 2.00 | - | 4.00 | 3.00 | <=1.5x |" in out
    assert "memory" not in out
    with pytest.raises(SystemExit, match="no results.json"):
        summary.main([str(tmp_path / "missing")])


def test_model_layer_rows_lists_every_conv_and_batch_norm_of_the_model(capsys):
    """scripts/model_layer_rows.py: one row per Conv2d and BatchNorm2d with the input shape it sees in
    the model, the first conv without dx, and totals (numbers are timings: only their presence is checked)."""
    pytest.importorskip("torch")
    rows = _script("model_layer_rows")
    rows.main(["--model", "cnn", "--batch", "2", "--reps", "1"])
    lines = capsys.readouterr().out.splitlines()
    layers = [ln for ln in lines[1:] if not ln.startswith("total")]
    assert len(layers) == 6 and [ln.split()[1] for ln in lines[-2:]] == ["conv", "batchnorm"]
    assert "conv 1->32 28x28 k3 s1 p1 no-dx" in layers[0]
    assert "batchnorm (2, 32, 28, 28)" in layers[1]
    assert "conv 32->32 14x14 k3 s1 p1" in layers[2] and "no-dx" not in layers[2]


def test_conv_blas_share_times_given_shapes_and_rejects_bad_ones(capsys):
    """scripts/conv_blas_share.py --conv: one row per given shape, with a BLAS share in 0-100+% (a
    timing: only its presence and range are checked); a shape of the wrong length is an error."""
    share = _script("conv_blas_share")
    share.main(["--reps", "1", "--conv", "2,3,4,6,3,1,1", "--conv", "2,8,8,6,3,2,1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "row"
    assert lines[1].startswith("N2 3->4 6x6 k3 s1 p1") and lines[2].startswith("N2 8->8 6x6 k3 s2 p1")
    assert all(0 < float(ln.split()[8].rstrip("%")) for ln in lines[1:])   # the BLAS share
    with pytest.raises(SystemExit):
        share.main(["--conv", "2,3,4"])
    assert "seven integers" in capsys.readouterr().err


def test_quick_bench_on_a_kernel_device_records_gpunet_rows_and_peak_memory(device_backend, monkeypatch):
    """The bench's device path (timing with device syncs, the CuPy memory-hook peak on a GPU) runs end to end;
    PyTorch is left out so only gpunet's side is exercised."""
    monkeypatch.setitem(sys.modules, "torch", None)
    dev = "cuda" if device_backend.name == "cupy" else device_backend.name
    res = run_bench(dev, quick=True, reps=1, only="maxpool,memory")
    assert {r["group"] for r in res["rows"]} == {"maxpool", "memory"}
    for r in res["rows"]:
        assert r["errors"] == {}, (r["id"], r["errors"])
    peak = [r for r in res["rows"] if r["group"] == "memory"]
    assert peak and all(r["gpunet"]["peak"] > 0.1 for r in peak), peak     # MiB held at the step's peak
