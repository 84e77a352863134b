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


def test_parity_lr_names_the_option(capsys):
    assert main(["parity", "--lr", "nan", "--device", "cpu", "--quiet"]) == 1
    one_line_error(capsys, "--lr nan: SGD: invalid lr nan")


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


# --- tracebacks where a one-line error belongs --------------------------------------------------------------

def test_damaged_gz_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    from test_data import make_idx_dir
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "mnist")
    p = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[10] ^= 0xFF  # the first byte of the deflate stream: zlib.error, not gzip's own OSError
    p.write_bytes(bytes(raw))
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), *QUICK[2:],
                 "--out", str(tmp_path / "r")]) == 1
    one_line_error(capsys, str(p), "cannot read IDX data")


@pytest.mark.parametrize("content", [b"not a tarball at all", "truncated"])
def test_bad_cifar_tarball_is_one_line_naming_it(tmp_path, capsys, monkeypatch, content):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    (tmp_path / "d").mkdir()
    archive = tmp_path / "d" / "cifar-10-python.tar.gz"
    if content == "truncated":
        content = _cifar_tarball()[:-300]
    archive.write_bytes(content)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), *QUICK[2:],
                 "--out", str(tmp_path / "r")]) == 1
    one_line_error(capsys, str(archive), "not a readable CIFAR-10 tarball")
    assert not (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py").exists()


def _cifar_tarball(labels=None, n=4) -> bytes:
    """A CIFAR-10-shaped tarball of n images per batch (labels: the test batch's labels)."""
    import io
    import pickle
    import tarfile
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            lab = labels if (labels is not None and name == "test_batch") else [i % 10 for i in range(n)]
            blob = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": lab})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_cifar_string_labels_name_the_file(tmp_path, capsys, monkeypatch):
    import pickle
    from test_data import write_cifar
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    folder = tmp_path / "d" / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}, f)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), *QUICK[2:],
                 "--out", str(tmp_path / "r")]) == 1
    one_line_error(capsys, str(folder / "test_batch"), "labels")


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, capsys, monkeypatch):
    import errno

    import gpunet.checkpoint
    real, calls = gpunet.checkpoint.np.savez, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)
    monkeypatch.setattr(gpunet.checkpoint.np, "savez", savez)
    assert train(tmp_path, "--epochs", "2") == 1
    run = tmp_path / "run"
    one_line_error(capsys, "No space left on device", f"the last good checkpoint, {run / 'checkpoint.npz'} "
                   "(epoch 1), is kept")
    assert load_checkpoint(run / "checkpoint.npz").epoch == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "history.json"]


def test_os_errors_name_the_path(tmp_path, capsys, monkeypatch):
    """Any OSError reaching the CLI boundary is one line naming its path (here: history.json not writable)."""
    import gpunet.training.recipe as recipe
    real = recipe._write_json

    def refuse(path, obj):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(recipe, "_write_json", refuse)
    assert train(tmp_path) == 1
    one_line_error(capsys, f"{tmp_path / 'run' / 'history.json'}: Permission denied")
    monkeypatch.setattr(recipe, "_write_json", real)


# --- item 8: temporaries of killed writes are removed, run files share one mode -------------------------------

def test_stale_temporaries_are_removed_and_run_files_share_one_mode(tmp_path):
    import os
    import subprocess
    import sys
    old_umask = os.umask(0o022)
    try:
        assert train(tmp_path) == 0
        run = tmp_path / "run"
        modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
        assert set(modes.values()) == {0o644}, modes  # checkpoint.npz was 0600
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = [run / f".checkpoint.npz.{dead.pid}.0badf00d.tmp", run / ".checkpoint.npz.k3j4h5ab.tmp",
                 run / f".history.json.{dead.pid}.0badf00d.tmp", run / f".metrics.json.{dead.pid}.0badf00d.tmp"]
        live = run / f".checkpoint.npz.{os.getppid()}.0badf00d.tmp"  # a writer that still runs: left alone
        for p in stale + [live]:
            p.write_bytes(b"half a file")
        assert main(["train", "--resume", str(run / "checkpoint.npz"), "--epochs", "2", "--quiet"]) == 0
        assert [p.name for p in stale if p.exists()] == [] and live.exists()
        assert {p.stat().st_mode & 0o777 for p in run.iterdir() if not p.name.startswith(".")} == {0o644}
    finally:
        os.umask(old_umask)


# --- item 9: eval reads the test split only -----------------------------------------------------------------

def test_eval_needs_only_the_test_files(tmp_path, capsys, monkeypatch):
    """The normalisation statistics are in the checkpoint: eval never reads (or downloads) the train files."""
    import shutil
    import socket
    from test_data import make_idx_dir, write_cifar
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    monkeypatch.setenv("GPUNET_DATA_URL", f"http://127.0.0.1:{s.getsockname()[1]}")  # nothing listens
    s.close()
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    make_idx_dir(tmp_path / "full", n_train=200, hw=(8, 8))
    write_cifar(tmp_path / "cfull" / "cifar-10-batches-py", n=100)
    for dataset, full, files in (("mnist", "full", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
                                 ("cifar10", "cfull", ["cifar-10-batches-py/test_batch"])):
        assert main(["train", "--dataset", dataset, "--data-dir", str(tmp_path / full), "--model", "mlp",
                     *QUICK[2:], "--limit-train", "100", "--out", str(tmp_path / dataset)]) == 0
        m = json.loads((tmp_path / dataset / "metrics.json").read_text())
        test_only = tmp_path / f"{dataset}-test-only"
        for f in files:
            (test_only / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / full / f, test_only / f)
        capsys.readouterr()
        assert main(["eval", str(tmp_path / dataset / "checkpoint.npz"), "--data-dir", str(test_only),
                     "--device", "cpu"]) == 0, capsys.readouterr().err
        assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in capsys.readouterr().out


# --- item 10: --help says what the environment variables do --------------------------------------------------

def test_help_explains_the_environment_variables(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for var, what in (("GPUNET_DEBUG", "traceback"), ("GPUNET_DATA", "download cache"),
                      ("GPUNET_DATA_URL", "mirror"), ("GPUNET_KERNEL_DIR", ".cu"), ("GPUNET_DEVICE", "auto")):
        line = next((l for l in out.splitlines() if l.strip().startswith(var + " ")), "")
        assert what in line, (var, line)
