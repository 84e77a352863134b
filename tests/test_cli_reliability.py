"""Nothing lost, nothing silent (issue 20): run folders, resume limits, option ranges, NaN data and weights,
one-line errors instead of tracebacks. Small offline runs on the digits data."""
import json

import numpy as np
import pytest

from gpunet.checkpoint import load_checkpoint
from gpunet.cli.main import main

QUICK = ["--limit-train", "200", "--epochs", "1", "--device", "cpu", "--quiet"]


def train(tmp_path, *extra, name="run"):
    return main(["train", *QUICK, "--out", str(tmp_path / name), *extra])


def one_line_error(capsys, *fragments):
    """The stderr of a failed command: exactly one line, holding every fragment."""
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert str(f) in lines[0], (f, lines[0])
    return lines[0]


# --- item 1: a run folder holding a run is refused -------------------------------------------------------

def test_a_folder_holding_a_run_is_refused(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "2") == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert train(tmp_path) == 1
    one_line_error(capsys, f"--out {run}", "holds a run", f"--resume {run / 'checkpoint.npz'}", "--overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert train(tmp_path, "--overwrite", "--seed", "1") == 0
    ck = load_checkpoint(run / "checkpoint.npz")
    assert ck.epoch == 1 and ck.config["seed"] == 1
    assert len(json.loads((run / "history.json").read_text())) == 1


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert train(tmp_path, name="taken") == 1
    one_line_error(capsys, f"--out {tmp_path / 'taken'}", "is a file")


# --- item 3: resuming to fewer epochs than done -----------------------------------------------------------

def test_resume_to_fewer_epochs_is_an_error(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "2") == 0
    metrics = (tmp_path / "run" / "metrics.json").read_bytes()
    capsys.readouterr()
    ck = tmp_path / "run" / "checkpoint.npz"
    assert main(["train", "--resume", str(ck), "--epochs", "1", "--quiet"]) == 1
    one_line_error(capsys, "--epochs 1", str(ck), "trained 2 epochs")
    assert (tmp_path / "run" / "metrics.json").read_bytes() == metrics


# --- item 6: every option in range, the error naming the option -------------------------------------------

@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-0.1"),
                                           ("--weight-decay", "nan"), ("--weight-decay", "-1"),
                                           ("--clip-grad-norm", "inf"), ("--seed", "-1"), ("--epochs", "0")])
def test_out_of_range_options_name_the_option(tmp_path, capsys, option, value):
    assert train(tmp_path, option, value) == 1
    one_line_error(capsys, option)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("n", [2, 4, 50])
def test_limit_train_too_small_needs_one_image_per_class_and_split(tmp_path, capsys, n):
    assert main(["train", *QUICK[2:], "--limit-train", str(n), "--out", str(tmp_path / "r")]) == 1
    one_line_error(capsys, f"--limit-train {n}", "at least one image per class and split", "use at least 100")


def test_limit_train_above_the_dataset_says_it_uses_all(tmp_path, capsys):
    assert main(["train", *QUICK[2:], "--limit-train", "100000", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "--limit-train 100000 is not below the 1438 training images of digits: using all 1438" in out
