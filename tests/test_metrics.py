"""Precision, recall, F1 and the confusion matrix, checked against scikit-learn on the same predictions."""
import json

import numpy as np
import pytest

from gpunet import nn
from gpunet.cli.main import main
from gpunet.data import DataLoader
from gpunet.training import evaluate, run, TrainConfig
from gpunet.training.metrics import format_report, from_confusion

sk = pytest.importorskip("sklearn.metrics")


def _sklearn(y, pred, k):
    p, r, f, s = sk.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    return dict(precision=p, recall=r, f1=f, support=s, macro_precision=p.mean(), macro_recall=r.mean(),
                macro_f1=f.mean(), confusion_matrix=sk.confusion_matrix(y, pred, labels=range(k)))


def _assert_matches(ours, y, pred, k):
    ref = _sklearn(y, pred, k)
    np.testing.assert_array_equal(ours["confusion_matrix"], ref["confusion_matrix"])
    np.testing.assert_array_equal(ours["support"], ref["support"])
    for key in ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-12, err_msg=key)


def test_from_confusion_matches_sklearn_with_absent_and_never_predicted_classes():
    rng = np.random.default_rng(0)
    k = 6
    y = rng.integers(0, k - 1, 200)            # class 5 never occurs in the labels
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
    pred[pred == 2] = 3                        # class 2 is never predicted
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    m = from_confusion(cm)
    _assert_matches(m, y, pred, k)
    assert m["precision"][2] == 0 and m["recall"][5] == 0 and m["f1"][5] == 0


def _model_and_loader(backend, n=150, k=4):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, k, n)
    backend.seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, k)).to(backend)
    return model, x, y, DataLoader(x, y, 32, shuffle=False, backend=backend)


def test_evaluate_reports_sklearns_metrics_on_its_own_predictions(backend):
    model, x, y, loader = _model_and_loader(backend)
    r = evaluate(model, loader)
    pred = backend.asnumpy(model(backend.xp.asarray(x))).argmax(axis=1)
    _assert_matches(r, y, pred, 4)
    assert r["accuracy"] == pytest.approx((pred == y).mean()) and r["n"] == len(y)


def test_evaluate_names_labels_beyond_the_outputs(numpy_backend):
    model, x, y, _ = _model_and_loader(numpy_backend)
    y = y.copy()
    y[3] = 7
    with pytest.raises(ValueError, match=r"labels outside \[0, 4\)"):
        evaluate(model, DataLoader(x, y, 32, shuffle=False, backend=numpy_backend),
                 loss_fn=lambda logits, labels: logits.sum() * 0)  # a loss that never indexes by label


def test_report_lists_every_class_and_the_macro_means():
    m = from_confusion([[3, 1], [0, 4]])
    text = format_report(m).splitlines()
    assert len(text) == 4 and text[-1].split()[:2] == ["macro", "avg"]
    assert text[1].split() == ["0", "1.0000", "0.7500", "0.8571", "4"]


def test_train_and_eval_record_the_metrics_and_draw_the_matrix(tmp_path, capsys):
    r = run(TrainConfig(dataset="digits", device="cpu", limit_train=200, epochs=1, model="mlp"),
            out_dir=tmp_path / "run", progress="none", log=None)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cm = np.asarray(m["test_confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == m["test_samples"] == 359
    assert np.trace(cm) / cm.sum() == pytest.approx(m["test_accuracy"])
    assert m["test_macro_f1"] == pytest.approx(np.mean(m["test_f1"])) and len(m["test_recall"]) == 10
    assert (tmp_path / "run" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.metrics["test_macro_f1"] == m["test_macro_f1"]

    png = tmp_path / "cm.png"
    assert main(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--device", "cpu", "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"macro F1 {m['test_macro_f1']:.4f}" in out and "macro avg" in out and png.is_file()
