"""Lag figures of a run (cio_sync/rules/lag.py): nearest-rank percentiles."""

from cio_sync.rules.lag import lag_figures


def test_lag_figures_of_a_hundred_delays():
    assert lag_figures([float(s) for s in range(100, 0, -1)]) == {"p50": 50.0, "p95": 95.0, "max": 100.0}


def test_lag_figures_of_one_delay_and_of_none():
    assert lag_figures([2.04]) == {"p50": 2.0, "p95": 2.0, "max": 2.0}
    assert lag_figures([]) == {"p50": None, "p95": None, "max": None}


def test_a_negative_delay_from_clock_skew_counts_as_zero():
    assert lag_figures([-3.0, 1.0]) == {"p50": 0.0, "p95": 1.0, "max": 1.0}
