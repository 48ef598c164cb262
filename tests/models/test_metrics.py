import math

import numpy as np
import pytest

from microal.data.tiling import IGNORE_INDEX
from microal.models.metrics import (
    PixelCounts,
    balanced_class_weights,
    phase_fractions,
    relative_domain_transferability,
)


def test_iou_from_known_masks():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
    counts = PixelCounts.from_masks(pred, truth, num_classes=3)
    iou = counts.iou()
    assert iou[0] == pytest.approx(3 / 4) and iou[1] == pytest.approx(4 / 5)
    assert math.isnan(iou[2])  # absent from both: no IoU, not a free 1.0
    assert counts.miou() == pytest.approx((3 / 4 + 4 / 5) / 2)


def test_ignored_pixels_do_not_count_and_counts_add_up():
    truth = np.array([[0, IGNORE_INDEX], [1, 1]])
    pred = np.array([[0, 1], [1, 0]])
    counts = PixelCounts.from_masks(pred, truth, 2)
    assert counts.tp.tolist() == [1, 1] and counts.fp.tolist() == [1, 0] and counts.fn.tolist() == [0, 1]
    doubled = counts + counts
    assert doubled.tp.tolist() == [2, 2] and doubled.miou() == pytest.approx(counts.miou())


def test_phase_fractions_and_rdt():
    mask = np.array([[0, 0, 0, 1], [2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    np.testing.assert_allclose(phase_fractions(mask, 3), [0.5, 1 / 6, 1 / 3])
    assert relative_domain_transferability(0.497, 0.822) == pytest.approx(-0.3954, abs=1e-4)
    assert math.isnan(relative_domain_transferability(0.5, 0.0))


def test_balanced_class_weights_follow_one_over_the_root_of_the_share():
    weights = balanced_class_weights(np.array([64, 16, 4, 0]))
    assert weights[0] / weights[1] == pytest.approx(0.5) and weights[1] / weights[2] == pytest.approx(0.5)
    assert weights[3] == pytest.approx(weights[2])  # an unseen class weighs as the rarest seen
    share = np.array([64, 16, 4, 0]) / 84
    assert float((weights * share).sum()) == pytest.approx(1.0)  # an average pixel weighs 1
