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


# --- item 5: NaN/inf in the data or the weights is named, exit 1 ------------------------------------------

def _digits_with(monkeypatch, value, index):
    """Make sklearn's digits hold `value` in one pixel of image `index`."""
    import sklearn.datasets
    real = sklearn.datasets.load_digits

    def patched(*a, **k):
        d = real(*a, **k)
        d.images = d.images.copy()
        d.images[index, 3, 4] = value
        return d
    monkeypatch.setattr(sklearn.datasets, "load_digits", patched)


def test_train_stops_before_training_on_nan_pixels(tmp_path, capsys, monkeypatch):
    from gpunet.data.datasets import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, stratified_split
    import sklearn.datasets
    tr, _ = stratified_split(sklearn.datasets.load_digits().target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    _digits_with(monkeypatch, np.nan, tr[5])
    assert train(tmp_path) == 1
    one_line_error(capsys, "digits", "train split", "non-finite", "image 5")
    assert not (tmp_path / "run").exists()


def test_eval_of_inf_test_data_is_an_error(tmp_path, capsys, monkeypatch):
    assert train(tmp_path) == 0
    from gpunet.data.datasets import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, stratified_split
    import sklearn.datasets
    _, te = stratified_split(sklearn.datasets.load_digits().target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    _digits_with(monkeypatch, np.inf, te[7])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--device", "cpu"]) == 1
    one_line_error(capsys, "digits", "test split", "non-finite", "image 7")


def test_eval_of_nan_weights_is_an_error(tmp_path, capsys):
    assert train(tmp_path) == 0
    ck = tmp_path / "run" / "checkpoint.npz"
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k.startswith("model/") and k.endswith("weight"))
    arrays[name] = arrays[name].copy()
    arrays[name].flat[3] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, **arrays)
    capsys.readouterr()
    assert main(["eval", str(bad), "--device", "cpu"]) == 1
    one_line_error(capsys, str(bad), name[len("model/"):], "non-finite")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_eval_whose_outputs_overflow_is_an_error(tmp_path, capsys):
    """Finite weights and data can still give a NaN loss (outputs beyond float32): never print `test loss nan`."""
    assert train(tmp_path) == 0
    ck = tmp_path / "run" / "checkpoint.npz"
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    last = [k for k in arrays if k.startswith("model/") and k.endswith("weight")][-1]
    arrays[last] = np.full_like(arrays[last], 3e38)
    big = tmp_path / "big.npz"
    np.savez(big, **arrays)
    capsys.readouterr()
    assert main(["eval", str(big), "--device", "cpu"]) == 1
    one_line_error(capsys, str(big), "non-finite test loss")
