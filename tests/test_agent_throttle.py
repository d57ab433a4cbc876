"""The pairing throttle on a fake clock: the limits of ``inspector/agent/throttle.py`` and the
brute-force arithmetic its docstring states (the README repeats it)."""
from __future__ import annotations

import threading
import time

import pytest

from inspector.agent import throttle as T
from inspector.agent.throttle import PairingThrottle, TooManyAttempts


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def guesses(th: PairingThrottle, clock: Clock, peers: list[str], seconds: float, step: float = 1.0) -> int:
    """An attacker that tries as soon as it may, from every address in turn, for ``seconds``."""
    n, end = 0, clock.t + seconds
    while clock.t < end:
        for peer in peers:
            try:
                th.check(peer)
            except TooManyAttempts:
                continue
            th.failed(peer)
            n += 1
        clock.t += step
    return n


def test_two_typos_are_free_then_the_address_waits_twice_as_long_each_time():
    clock = Clock()
    th = PairingThrottle(clock)
    waits = []
    for _ in range(16):
        th.check("10.0.0.5")
        waits.append(th.failed("10.0.0.5"))
        with pytest.raises(TooManyAttempts) if waits[-1] else _nothing():
            th.check("10.0.0.5")
        clock.t += waits[-1]
        clock.t += 3600 / T.GLOBAL_PER_HOUR   # keep the global bucket out of this test
    assert waits[:5] == [0, 0, 1, 2, 4] and waits[13] == 2048 and waits[14:] == [3600, 3600]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_refusal_says_when_and_another_address_is_not_affected():
    clock = Clock()
    th = PairingThrottle(clock)
    for _ in range(5):
        th.failed("192.168.1.66")
    with pytest.raises(TooManyAttempts) as exc:
        th.check("192.168.1.66")
    assert exc.value.retry_after == 4
    th.check("192.168.1.20")          # the real user, elsewhere: at once
    th.succeeded("192.168.1.66")      # a correct code clears the address
    th.check("192.168.1.66")


def test_an_ipv6_64_is_one_address_and_a_day_of_quiet_forgets():
    clock = Clock()
    th = PairingThrottle(clock)
    for i in range(4):
        th.failed(f"2001:db8:1:2::{i + 1}")
    with pytest.raises(TooManyAttempts):
        th.check("2001:db8:1:2:ffff::9")
    assert T.address_key("::ffff:10.0.0.5") == "10.0.0.5"
    clock.t += T.FORGET_AFTER_S + 1
    th.check("2001:db8:1:2::1")
    assert th.failures("2001:db8:1:2::1") == 0


def test_brute_force_arithmetic_of_the_docstring():
    clock = Clock()
    one = guesses(PairingThrottle(clock), clock, ["10.0.0.66"], 24 * 3600.0, step=0.5)
    # day one: 15 guesses in the first 68 minutes, then one an hour
    assert 36 <= one <= 40, one
    clock = Clock()
    many = guesses(PairingThrottle(clock), clock, [f"10.0.0.{i}" for i in range(60)], 24 * 3600.0, step=60.0)
    # any number of addresses: the global cap, 20 an hour plus the burst of 10
    assert T.GLOBAL_PER_HOUR * 24 <= many <= T.GLOBAL_PER_HOUR * 24 + T.GLOBAL_BURST + 1, many
    mean_guesses = (10**6 + 1) / 2
    assert mean_guesses / (T.GLOBAL_PER_HOUR * 24) / 365 > 2.5            # ≈ 2.9 years on average
    assert 30 * T.GLOBAL_PER_HOUR * 24 / 10**6 < 0.015                     # < 1.5 % in 30 days
    assert mean_guesses / 24 / 365 > 50                                    # one address: ≈ 57 years


def test_the_global_cap_refuses_everyone_without_sleeping_and_refills():
    clock = Clock()
    th = PairingThrottle(clock)
    for i in range(T.GLOBAL_BURST):
        th.check(f"10.1.0.{i}")
        th.failed(f"10.1.0.{i}")
    with pytest.raises(TooManyAttempts) as exc:
        th.check("10.2.0.1")            # a fresh address: refused before its code is compared
    assert 1 <= exc.value.retry_after <= 3600 / T.GLOBAL_PER_HOUR
    clock.t += exc.value.retry_after
    th.check("10.2.0.1")


def test_threads_never_wait_on_each_other_for_long():
    th = PairingThrottle()
    errors = []

    def hammer(i: int) -> None:
        for _ in range(200):
            try:
                th.check(f"10.3.{i}.1")
                th.failed(f"10.3.{i}.1")
            except TooManyAttempts:
                pass
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)


def test_a_burst_of_parallel_guesses_is_counted_before_any_passes(tmp_path):
    """64 wrong codes at once from one address: the check and the count are one step, so only
    the free ones and the one that starts the wait are compared; the rest are 429."""
    from agent_support import new_public_key

    from inspector.agent.identity import Identity
    from inspector.link.protocol import ApiError

    class SlowThrottle(PairingThrottle):   # widens the window between check and count
        def check(self, peer: str) -> None:
            super().check(peer)
            time.sleep(0.01)

    ident = Identity(tmp_path / "data", name="burst", throttle=SlowThrottle())
    wrong = f"{(int(ident.pairing_code) + 1) % 10**6:06d}"
    key = new_public_key()
    answers, start = [], threading.Barrier(64)

    def guess() -> None:
        start.wait()
        try:
            ident.pair(wrong, "burst", key, peer="10.9.9.9")
        except ApiError as exc:
            answers.append(exc.status)

    threads = [threading.Thread(target=guess) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers.count(403) == T.FREE_FAILURES and answers.count(429) == 64 - T.FREE_FAILURES, answers
