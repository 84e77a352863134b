"""TensorBoard logs: the real TensorBoard server reads the scalars of a `--tensorboard` run back over its HTTP data
API and they match history.json and metrics.json; after a resume, tensorboard's own event reader sees every step
exactly once; without the package, --tensorboard is a one-line error saying what to install."""
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from gpunet.cli.main import main
from gpunet.training.recipe import TrainConfig, run

CONFIG = dict(model="mlp", limit_train=200, batch_size=64, device="cpu", seed=0)


def _train(out, epochs, resume=None):
    return run(TrainConfig(epochs=epochs, **CONFIG), out_dir=out, resume=resume, progress="none", log=None,
               tensorboard=True)


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_tensorboard_server_serves_the_scalars_of_history_json(tmp_path):
    pytest.importorskip("tensorboard")
    result = _train(tmp_path / "run", epochs=2)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    steps = len(result.trainer._loader) * 2
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "run"),
                             "--host", "127.0.0.1", "--port", "0", "--load_fast=false", "--reload_interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode} before serving")
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "tensorboard printed no address within 60 s"

        def scalars(tag):
            return _get(f"{url}/data/plugin/scalars/scalars?run=.&tag={tag}")
        while time.monotonic() < deadline:  # the server loads the event files in the background
            try:
                if len(scalars("step/loss")) == steps and scalars("test/accuracy"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            got = scalars(f"epoch/{key}")
            assert [s[1] for s in got] == [h["epoch"] for h in history], key
            assert [s[2] for s in got] == pytest.approx([h[key] for h in history], rel=1e-6), key
        loss = scalars("step/loss")
        assert [s[1] for s in loss] == list(range(1, steps + 1))
        assert [s[2] for s in scalars("test/accuracy")] == pytest.approx([metrics["test_accuracy"]], rel=1e-6)
        assert [s[2] for s in scalars("test/loss")] == pytest.approx([metrics["test_loss"]], rel=1e-6)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_resumed_run_appends_every_step_once(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    out = tmp_path / "run"
    first = _train(out, epochs=1)
    spe = len(first.trainer._loader)
    # a run killed during epoch 2 logged steps past its checkpoint: the resume must drop them, not repeat them
    w = EventFileWriter(str(out))
    w.add_event(Event(step=spe + 1, summary=Summary(value=[Summary.Value(tag="step/loss", simple_value=99.0)])))
    w.add_event(Event(step=2, summary=Summary(value=[Summary.Value(tag="epoch/train_loss", simple_value=99.0)])))
    w.close()
    _train(out, epochs=3, resume=out / "checkpoint.npz")
    history = json.loads((out / "history.json").read_text())
    acc = EventAccumulator(str(out), purge_orphaned_data=False)
    acc.Reload()
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps == list(range(1, 3 * spe + 1))
    assert 99.0 not in [e.value for e in acc.Scalars("step/loss")]
    epoch_loss = acc.Scalars("epoch/train_loss")
    assert [e.step for e in epoch_loss] == [1, 2, 3]
    assert [e.value for e in epoch_loss] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    lrs = [e.value for e in acc.Scalars("step/lr")]
    assert lrs[0] == pytest.approx(history[0]["lr"]) and lrs[spe] == pytest.approx(history[1]["lr"], rel=1e-6)


def test_histograms_every_n_epochs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = run(TrainConfig(epochs=2, **CONFIG), out_dir=tmp_path, progress="none", log=None, tensorboard=True,
                 histograms_every=2)
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    names = [n for n, _ in result.model.named_parameters()]
    assert sorted(acc.Tags()["histograms"]) == sorted([f"weights/{n}" for n in names] + [f"grads/{n}" for n in names])
    h = acc.Histograms(f"weights/{names[0]}")
    assert [e.step for e in h] == [2]
    assert h[0].histogram_value.num == result.model.state_dict()[names[0]].size


def test_without_tensorboard_the_flag_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    for name in [n for n in sys.modules if n == "tensorboard" or n.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["train", "--tensorboard", "--epochs", "1", "--out", str(tmp_path / "r"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'gpunet[tensorboard]'" in err[0]
    assert not (tmp_path / "r").exists()
