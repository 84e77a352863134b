"""Classification metrics from a confusion matrix: precision, recall, F1 per class and their macro means.

Accuracy hides which classes a model gets wrong; the confusion matrix shows it, and precision, recall and F1
summarise it per class. `evaluate` builds the matrix on the device (one bincount per batch, one transfer at
the end) and calls `from_confusion`. Conventions are scikit-learn's with `labels=range(K)` and
`zero_division=0`: rows are true classes, columns predicted ones; a class never predicted has precision 0,
a class absent from the labels recall 0; macro means average all K classes.
"""
from __future__ import annotations

import numpy as np


def confusion_counts(xp, y_true, y_pred, num_classes: int):
    """The K*K confusion counts of one batch on the device, flat (row = true class, column = prediction),
    then one more bin: the labels outside [0, K), which the caller must find empty."""
    y_true = y_true.astype(xp.int64)
    idx = xp.where((y_true >= 0) & (y_true < num_classes), y_true * num_classes + y_pred.astype(xp.int64),
                   num_classes * num_classes)
    return xp.bincount(idx, minlength=num_classes * num_classes + 1)


def _ratio(num, den):
    """num/den elementwise, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def from_confusion(cm) -> dict:
    """Per-class precision, recall, F1 and support, their macro means and the matrix itself (lists, for JSON)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp, predicted, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, predicted + support)  # = 2PR/(P+R), and 0 where a class is neither present nor predicted
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.tolist(), "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()), "macro_f1": float(f1.mean()), "confusion_matrix": cm.tolist()}


def format_report(metrics: dict, class_names=None) -> str:
    """A table of per-class precision, recall, F1 and support, then the macro means (scikit-learn's layout)."""
    k = len(metrics["precision"])
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    width = max(9, *(len(n) for n in names))
    lines = [f"{'class':>{width}}  precision  recall      f1  support"]
    for i, name in enumerate(names):
        lines.append(f"{name:>{width}}  {metrics['precision'][i]:9.4f}  {metrics['recall'][i]:6.4f}  "
                     f"{metrics['f1'][i]:6.4f}  {metrics['support'][i]:7d}")
    lines.append(f"{'macro avg':>{width}}  {metrics['macro_precision']:9.4f}  {metrics['macro_recall']:6.4f}  "
                 f"{metrics['macro_f1']:6.4f}  {sum(metrics['support']):7d}")
    return "\n".join(lines)


__all__ = ["confusion_counts", "from_confusion", "format_report"]
