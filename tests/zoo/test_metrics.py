from __future__ import annotations

import math

import numpy as np
import pytest

from zoo.metrics import auc, classification_metrics, ece, f1_binary, f1_macro


def _probs(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p, p], axis=1)


def test_binary_auc_counts_ties_one_half():
    # positives {0.4, 0.8} vs negatives {0.1, 0.4}: 1 + 0.5 + 1 + 1 = 3.5 of 4 pairs
    assert auc(_probs([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)
    assert auc(_probs([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == pytest.approx(0.5)
    assert math.isnan(auc(_probs([0.2, 0.9]), np.array([1, 1])))


def test_multiclass_auc_is_macro_one_vs_rest():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = np.array([0, 1, 2, 2])
    # class 0: pos {0.7} vs neg {0.2, 0.3, 0.5} -> 1; class 1: pos {0.5} vs {0.2, 0.3, 0.1} -> 1;
    # class 2: pos {0.4, 0.4} vs neg {0.1, 0.3} -> 1
    assert auc(probs, labels) == pytest.approx(1.0)
    labels = np.array([0, 1, 2, 0])
    # class 0: pos {0.7, 0.5} vs {0.2, 0.3} -> 1; class 1: pos {0.5} vs {0.2, 0.3, 0.1} -> 1;
    # class 2: pos {0.4} vs {0.1, 0.3, 0.4} -> (1 + 1 + 0.5)/3
    assert auc(probs, labels) == pytest.approx((1 + 1 + 2.5 / 3) / 3)


def test_binary_f1_is_not_macro_f1_nor_accuracy():
    labels = np.array([1, 1, 0, 0, 0])
    probs = _probs([0.9, 0.2, 0.1, 0.3, 0.8])  # predictions 1, 0, 0, 0, 1
    assert f1_binary(probs, labels) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # 0.5
    assert f1_macro(probs, labels) == pytest.approx((0.5 + 4 / 6) / 2)
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.6) and m["f1"] == pytest.approx(0.5)


def test_ece_by_hand():
    # confidences 0.95 (right), 0.85 (wrong), 0.75 (right), 0.65 (wrong), one per bin
    probs = _probs([0.05, 0.85, 0.75, 0.35])
    labels = np.array([0, 0, 1, 1])
    assert ece(probs, labels) == pytest.approx((0.05 + 0.85 + 0.25 + 0.65) / 4)
    # two in one bin: accuracy 1/2 vs mean confidence 0.93
    assert ece(_probs([0.95, 0.91]), np.array([1, 0])) == pytest.approx(abs(0.5 - 0.93))
    assert ece(_probs([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)


def test_classification_metrics_keys_and_nll():
    probs = _probs([0.8, 0.3])
    m = classification_metrics(probs, np.array([1, 0]))
    assert set(m) == {"accuracy", "auc", "f1", "f1_macro", "ece", "nll"}
    assert m["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    three = classification_metrics(np.full((3, 3), 1 / 3), np.array([0, 1, 2]))
    assert "f1" not in three and three["auc"] == pytest.approx(0.5)
