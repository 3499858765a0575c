"""Classification metrics for slide-level predictions, shared by ``zoo.train`` and ``wsigym.evaluate``.

All functions take ``probs (S, C)`` (rows sum to 1) and integer ``labels (S,)``. F1 is always
explicit about its averaging: ``f1_binary`` is the F1 of class 1 (the positive/tumour class, as
SASHA reports), ``f1_macro`` the unweighted mean over classes. (ACMIL/ASMIL's "F1" is micro-F1,
which equals accuracy; it is not reported here under that name.)
"""

from __future__ import annotations

import itertools

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted one half; NaN when one class is absent."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: binary (score of class 1) for C = 2, macro one-vs-rest otherwise."""
    if probs.shape[1] == 2:
        return _binary_auc(probs[:, 1], labels == 1)
    per_class = [_binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    return float(np.nanmean(per_class)) if not np.all(np.isnan(per_class)) else float("nan")


def _f1(pred: np.ndarray, labels: np.ndarray, c: int) -> float:
    tp = int(((pred == c) & (labels == c)).sum())
    fp = int(((pred == c) & (labels != c)).sum())
    fn = int(((pred != c) & (labels == c)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_binary(probs: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (index 1), prediction = argmax."""
    return _f1(probs.argmax(1), labels, 1)


def f1_macro(probs: np.ndarray, labels: np.ndarray) -> float:
    pred = probs.argmax(1)
    return float(np.mean([_f1(pred, labels, c) for c in range(probs.shape[1])]))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the top-1 confidence over ``n_bins`` equal-width bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``auc``, ``f1`` (binary for 2 classes), ``f1_macro``, ``ece``, ``nll``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())
    out = {
        "accuracy": accuracy(probs, labels),
        "auc": auc(probs, labels),
        "f1_macro": f1_macro(probs, labels),
        "ece": ece(probs, labels),
        "nll": nll,
    }
    if probs.shape[1] == 2:
        out["f1"] = f1_binary(probs, labels)
    return out
