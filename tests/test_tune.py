"""`gpunet tune`: log-uniform sampling, a tiny random search on digits (table, JSON, scatter), the choice of
the best trial by validation accuracy, and diverging trials."""
import csv
import json
import math

import numpy as np
import pytest

from gpunet.cli.main import main as cli
from gpunet.diagnostics.tune import format_table, random_search, sample_trials, write_results

pytest.importorskip("sklearn")


def test_sampling_is_log_uniform_and_seeded():
    trials = sample_trials(4000, seed=3, lr_range=(1e-4, 1e-1), wd_range=(1e-6, 1e-2))
    assert trials[:5] == sample_trials(5, seed=3, lr_range=(1e-4, 1e-1), wd_range=(1e-6, 1e-2))
    lr = np.log10([t["lr"] for t in trials])
    wd = np.log10([t["weight_decay"] for t in trials])
    assert lr.min() >= -4 and lr.max() <= -1 and wd.min() >= -6 and wd.max() <= -2
    for logs, lo, hi in ((lr, -4, -1), (wd, -6, -2)):  # uniform in log space: flat decade counts
        counts = np.histogram(logs, bins=hi - lo, range=(lo, hi))[0]
        assert counts.min() > 0.85 * counts.max()
    with pytest.raises(ValueError, match="0 < low <= high"):
        sample_trials(2, lr_range=(0, 1))
    with pytest.raises(ValueError, match="trials must be >= 1"):
        sample_trials(0)


def test_tiny_random_search_picks_the_best_validation_trial(tmp_path):
    result = random_search(trials=3, epochs=1, model="mlp", device="cpu", seed=1, limit_train=300, log=None)
    rows = result["trials"]
    assert [r["trial"] for r in rows] == [1, 2, 3] and all(r["status"] == "ok" for r in rows)
    best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert result["best"] == best and 0 <= best["test_acc"] <= 1
    assert result["config"]["device"] == "numpy"
    assert "<- best (by validation)" in format_table(result).splitlines()[best["trial"]]
    paths = write_results(result, tmp_path)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in table] == [r["lr"] for r in rows]
    assert json.loads(paths["json"].read_text())["best"]["trial"] == best["trial"]
    if "plot" in paths:
        assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_cli_writes_table_and_reports_best(tmp_path, capsys):
    assert cli(["tune", "--trials", "2", "--epochs", "1", "--limit-train", "200", "--device", "cpu",
                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best: lr" in out and "validation accuracy" in out
    assert (tmp_path / "trials.csv").exists() and (tmp_path / "trials.json").exists()


def test_diverging_trials_are_recorded_not_fatal(tmp_path, capsys):
    with np.errstate(all="ignore"):
        code = cli(["tune", "--trials", "2", "--epochs", "1", "--limit-train", "100", "--device", "cpu",
                    "--optimizer", "sgd", "--lr-range", "1e4", "1e5", "--out", str(tmp_path)])
    assert code == 1 and "every trial diverged" in capsys.readouterr().out
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert [r["status"] for r in rows] == ["diverged", "diverged"] and rows[0]["val_acc"] is None
    assert math.isfinite(rows[0]["seconds"])
