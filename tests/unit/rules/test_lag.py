"""Lag figures of a run (cio_sync/rules/lag.py): a bucketed histogram, merged without keeping
every delay."""

from cio_sync.rules.lag import LagHistogram


def figures(*seconds: float) -> dict:
    histogram = LagHistogram()
    for value in seconds:
        histogram.add(value)
    return histogram.figures()


def test_figures_of_a_hundred_delays_are_within_a_bucket_of_the_true_ones():
    lag = figures(*(float(s) for s in range(100, 0, -1)))
    assert 50.0 <= lag["p50"] <= 50.0 * LagHistogram.GROWTH
    assert 95.0 <= lag["p95"] <= 100.0 and lag["max"] == 100.0


def test_figures_of_one_delay_and_of_none():
    assert figures(2.04) == {"p50": 2.0, "p95": 2.0, "max": 2.0}
    assert figures() == {"p50": None, "p95": None, "max": None}


def test_a_clock_ahead_of_ours_is_no_lag():
    assert figures(-3.0, 1.0) == {"p50": 0.1, "p95": 1.0, "max": 1.0}
