"""inspector.capture.rate.RateWindow: the one sliding-window rate (sources, agent, HUD)."""
import pytest

from inspector.capture.rate import RateWindow


def test_rate_over_the_window_only():
    w = RateWindow(2.0)
    assert w.rate(0.0) == 0.0
    for i in range(31):                      # 30 per second for one second
        w.add(10.0 + i / 30)
    assert w.rate(11.0) == pytest.approx(30.0)
    assert w.rate(12.9) == pytest.approx(30.0)   # still inside the window
    assert w.rate(13.5) == 0.0                    # all older than 2 s: no rate, not a stale one
    w.add(20.0)
    assert w.rate(20.0) == 0.0                    # one event is no rate


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        RateWindow(0)
