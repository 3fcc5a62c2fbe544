"""DVAR on sequences whose variances are computed by hand."""

import pytest

from edgeinv.stopping import Dvar, variance_ratio, window_in_steps


def test_ratio_by_hand():
    # var([1,2,3,4]) = 1.25; var([3,4]) = 0.25
    assert variance_ratio([1, 2, 3, 4], window=2) == pytest.approx(0.2)
    # var([4,2,1,1,1]) = 1.36; var([1,1,1]) = 0
    assert variance_ratio([4, 2, 1, 1, 1], window=3) == 0.0
    # var([5,3,1,2,1]) = 2.24; var([1,2,1]) = 2/9
    assert variance_ratio([5, 3, 1, 2, 1], window=3) == pytest.approx((2 / 9) / 2.24)


def test_no_ratio_before_the_window_fills():
    assert variance_ratio([1.0, 0.5], window=3) is None
    assert variance_ratio([1.0, 0.5, 0.2], window=3) == pytest.approx(1.0)  # window == history


def test_stops_exactly_when_the_ratio_falls_below_threshold():
    dvar = Dvar(window=3, threshold=0.15)
    decisions = [dvar.update(v) for v in [5, 3, 1, 2, 1, 1, 1]]
    # ratios: -, -, 1.0, (var[3,1,2]=2/3)/2.5=0.267, 0.0992 -> stop at the 5th value
    assert decisions == [False, False, False, False, True, True, True]
    assert dvar.ratio == pytest.approx(0.0)


def test_a_flat_history_counts_as_converged():
    assert variance_ratio([2.0, 2.0, 2.0], window=2) == 0.0


def test_state_round_trip():
    dvar = Dvar(window=4, threshold=0.3)
    for v in [3, 2, 1.5]:
        dvar.update(v)
    copy = Dvar.from_state(dvar.state())
    assert copy.update(1.4) == dvar.update(1.4) and copy.history == dvar.history


def test_window_in_sample_evaluations_becomes_steps():
    assert window_in_steps(4000, evaluations_per_step=96) == 42  # CMA-ES: 12 candidates x 8 samples
    assert window_in_steps(1240, evaluations_per_step=4) == 310  # gradient TI, batch 4: the paper's window
    assert window_in_steps(10, evaluations_per_step=100) == 5  # never shorter than the minimum
