"""The `gpunet` command line: train, eval, info, resume, errors (offline, small runs)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpunet.checkpoint import load_checkpoint
from gpunet.cli.main import build_parser, command_modules, main

QUICK = ["--limit-train", "200", "--epochs", "1", "--device", "cpu", "--quiet"]


def train(tmp_path, *extra, name="run"):
    return main(["train", *QUICK, "--out", str(tmp_path / name), *extra])


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "info"):
        assert cmd in out
    assert [m.__name__.rsplit(".", 1)[1] for m in command_modules()][:3] == ["train", "eval", "info"]


def test_commands_are_modules_with_add_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"train", "eval", "info"} <= set(sub.choices)
    for name in ("train", "eval", "info"):
        assert callable(sub.choices[name].get_default("func")), name


def test_info_says_what_auto_picks_and_why(capsys):
    compiler = shutil.which(os.environ.get("GPUNET_EMU_CXX", "g++"))
    assert main(["info"]) == (0 if compiler else 1)  # 1: the emulator cannot compile a kernel
    out = capsys.readouterr().out
    assert "auto device: " in out and "(auto:" in out or "GPUNET_DEVICE" in out
    assert f"NumPy {np.__version__}" in out and "BLAS: " in out and "CuPy" in out


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")
def test_info_checks_the_kernel_sources(tmp_path, capsys, monkeypatch):
    from gpunet.cuda.loader import kernel_dir
    monkeypatch.delenv("GPUNET_EMU_CXX", raising=False)
    sources = kernel_dir()
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"kernel sources: 5 found in {sources}" in lines
    assert lines[-1].startswith("emulator: compiles dropout.cu (")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GPUNET_KERNEL_DIR", str(empty))
    assert main(["info"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"kernel sources: error: kernel source 'conv2d_relu.cu' not found in {empty.resolve()} (GPUNET_KERNEL_DIR)")

    broken = tmp_path / "broken"
    shutil.copytree(sources, broken)
    with open(broken / "dropout.cu", "a") as f:
        f.write("\nthis is not C++;\n")
    monkeypatch.setenv("GPUNET_KERNEL_DIR", str(broken))
    assert main(["info"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == f"kernel sources: 5 found in {broken.resolve()}"
    assert out[-1].startswith("emulator: error: dropout.cu: cannot compile") and "dropout.cu:" in out[-1]


def test_missing_kernel_source_is_one_line_error(tmp_path):
    """An install without its kernels (here an empty GPUNET_KERNEL_DIR) fails with one line naming the file
    and the folder, exit 1, no traceback. In a subprocess: a backend keeps the kernel folder it started with."""
    env = {k: v for k, v in os.environ.items() if k != "GPUNET_DEBUG"}
    env["GPUNET_KERNEL_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "gpunet.cli.main", "parity", "--device", "emulator", "--quiet"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"gpunet parity: error: kernel source 'conv2d_relu.cu' not found in {tmp_path.resolve()} (GPUNET_KERNEL_DIR)"]


def test_train_then_eval(tmp_path, capsys):
    assert train(tmp_path) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(l.startswith("epoch 1/1  train loss") for l in lines)
    assert "test accuracy" in lines[-2]
    for f in ("checkpoint.npz", "history.json", "metrics.json", "curves.png"):
        assert (tmp_path / "run" / f).is_file(), f
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in out

    assert main(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--device", "cpu"]) == 0
    ev = capsys.readouterr().out
    assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in ev and f"test loss {m['test_loss']:.4f}" in ev


@pytest.mark.skipif(importlib.util.find_spec("gpunet.cuda.ops") is None, reason="CUDA ops not built yet")
def test_checkpoint_from_cpu_evaluates_on_the_device(tmp_path, capsys, device_backend):
    assert train(tmp_path) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    capsys.readouterr()
    device = "cuda" if device_backend.name == "cupy" else device_backend.name
    assert main(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--device", device]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in out and f"{device_backend.name})" in out


def test_resume_continues_bitwise(tmp_path):
    args = ["--schedule", "exp", "--seed", "3"]
    assert main(["train", *QUICK[:2], "--epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "a"),
                 *args]) == 0
    assert train(tmp_path, *args, name="b") == 0
    assert main(["train", "--resume", str(tmp_path / "b" / "checkpoint.npz"), "--epochs", "2", "--quiet"]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.npz"), load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert a.epoch == b.epoch == 2
    for k in a.model:
        np.testing.assert_array_equal(a.model[k], b.model[k], err_msg=k)
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 2


def test_clear_errors_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["eval", str(bad)]) == 1
    assert "bad.npz" in capsys.readouterr().err
    assert train(tmp_path) == 0
    capsys.readouterr()
    ck = str(tmp_path / "run" / "checkpoint.npz")
    assert main(["train", "--resume", ck, "--lr", "0.3", "--quiet"]) == 1
    assert "cannot change lr" in capsys.readouterr().err


def test_eval_on_a_dataset_of_another_shape(tmp_path, capsys, monkeypatch):
    from test_data import make_idx_dir
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "mnist", hw=(28, 28))
    assert train(tmp_path) == 0
    capsys.readouterr()
    code = main(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--dataset", "mnist", "--data-dir",
                 str(tmp_path / "mnist"), "--device", "cpu"])
    assert code == 1
    assert "takes (1, 8, 8) images" in capsys.readouterr().err


def test_offline_dataset_error_tells_where_to_put_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUNET_DATA_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "cache" / "mnist") in err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "gpunet.cli.main", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("gpunet ")


def test_train_with_no_arguments_reaches_97_percent(tmp_path, capsys, monkeypatch):
    """The README's first command: offline, default everything, into runs/<timestamp> of the working folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dataset"] == "digits" and m["model"] == "cnn" and m["epochs"] == 15 and m["seed"] == 0
    assert m["test_accuracy"] >= 0.97, m
    assert len([l for l in out.splitlines() if l.startswith("epoch ")]) == 15  # captured stdout is no TTY
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.npz", "confusion.png", "curves.png",
                                                         "history.json", "metrics.json"]


@pytest.mark.slow
def test_default_train_is_identical_run_to_run(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--quiet", "--out", str(tmp_path / name)]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.npz"), load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    for k in a.model:
        np.testing.assert_array_equal(a.model[k], b.model[k], err_msg=k)
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert (ma["test_accuracy"], ma["test_loss"]) == (mb["test_accuracy"], mb["test_loss"])


def test_train_monitor_flag(tmp_path, capsys):
    assert train(tmp_path, "--monitor", name="m") == 0                 # bare flag: every 10 steps
    assert "health.png" in capsys.readouterr().out
    hist = json.loads((tmp_path / "m" / "history.json").read_text())
    assert hist[0]["update_ratio"] and "dead_relu" in hist[0]
    assert load_checkpoint(tmp_path / "m" / "checkpoint.npz").config["monitor"] == 10
    assert train(tmp_path, "--monitor", "3", name="m3") == 0
    assert load_checkpoint(tmp_path / "m3" / "checkpoint.npz").config["monitor"] == 3
    assert (tmp_path / "m3" / "health.png").is_file()
