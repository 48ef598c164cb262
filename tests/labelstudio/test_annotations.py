import math

import numpy as np

from microal.data.tiling import IGNORE_INDEX
from microal.labelstudio.annotations import agreement, consolidate


def test_majority_vote_with_ties_and_unpainted_pixels():
    a = np.array([[0, 1, 2, IGNORE_INDEX]])
    b = np.array([[0, 1, 1, IGNORE_INDEX]])
    c = np.array([[0, 2, 1, 2]])
    assert consolidate([a, b, c], 3).tolist() == [[0, 1, 1, 2]]  # the lone painter of the last pixel decides
    assert consolidate([a, b], 3).tolist() == [[0, 1, IGNORE_INDEX, IGNORE_INDEX]]  # one against one: unknown
    assert consolidate([a], 3).tolist() == a.tolist()


def test_agreement_is_mean_pairwise_miou_on_pixels_both_painted():
    a = np.array([[0, 0, 1, 1]])
    assert agreement([a, a.copy()], 2) == 1.0
    b = np.array([[0, 1, 1, IGNORE_INDEX]])
    # On the 3 pixels both painted: class 0 IoU 1/2, class 1 IoU 1/2.
    assert agreement([a, b], 2) == 0.5
    assert math.isnan(agreement([a], 2))
