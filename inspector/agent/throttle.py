"""Wrong pairing codes: a back-off per client address and a cap for all addresses together.

A wrong code never replaces the code (a stranger must not be able to rotate the code a person is
reading off the agent's console); the code changes only when it is used (a successful pairing),
when the agent starts, and when the operator asks (``kill -HUP``, or a restart). Instead every
wrong code costs time, and no thread sleeps for it: a caller that must wait is answered at once
with ``429 too_many_attempts`` and ``Retry-After``, and that answer is not a guess.

Limits
------
Per address (an IPv4 address, or an IPv6 /64: one host owns a whole /64), after its n-th
consecutive wrong code, the next try is refused for::

    wait(n) = 0                              for n < FREE_FAILURES (3): two typos cost nothing
            = min(2 ** (n - 3), 3600) s      from the third on: 1, 2, 4, ... 2048 s, then an hour

A correct code from the address clears its count; so does a day without a wrong code.

For all addresses together, wrong codes draw from a token bucket of GLOBAL_BURST (10) that
refills at GLOBAL_PER_HOUR (20) per hour. When it is empty every pairing try is refused (429,
Retry-After ≤ 3 min) *before* the code is compared, else the cap would not cap anything.

What this means for brute force
-------------------------------
A code is 6 random digits: 10^6 values, fixed until used. Guessing without repeats, an
attacker needs on average (10^6 + 1) / 2 ≈ 500 000 guesses (10^6 if the agent restarts often,
since each restart draws a fresh code).

* One address: 15 guesses in the first 68 minutes (the waits add up to 1+2+…+2048 = 4095 s),
  then one an hour: about 24 a day. 500 000 / 24 ≈ 20 800 days ≈ 57 years on average;
  the chance within a year is 24·365 / 10^6 ≈ 0.9 %.
* Any number of addresses (a whole subnet, IPv6 privacy addresses): the global bucket caps
  all of them at 20 an hour plus the burst, 480 a day. 500 000 / 480 ≈ 1 040 days ≈ 2.9 years
  on average; the chance within a day is 480 / 10^6 ≈ 0.05 %, within 30 days ≈ 1.4 %, within a
  year ≈ 17.5 %. Every wrong code is logged with its address, so such a campaign is loud long
  before it has a real chance; the operator answers it by finding the address (or blocking it
  in a firewall) and, if in doubt, ``kill -HUP`` for a new code.

What it costs the real user: two typos are free, the third waits a second. While an attacker
keeps the global bucket empty, the user's try is refused with Retry-After of at most 3
minutes (GLOBAL_PER_HOUR = 20 → a token every 180 s) and succeeds when the user is first to use a
refilled token: pairing is slowed, never closed, and the code the user reads stays valid.

The table of addresses is bounded (MAX_ADDRESSES); when full, the entries with the oldest
last failure are dropped (such an address regains its free tries, the global cap still holds).
"""
from __future__ import annotations

import ipaddress
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable
from inspector.errors import InspectorError

FREE_FAILURES = 3            # wrong codes from one address before it must wait
MAX_WAIT_S = 3600.0          # the longest wait for one address
FORGET_AFTER_S = 24 * 3600.0 # a day without a wrong code clears the address's count
GLOBAL_BURST = 10            # wrong codes any set of addresses may spend at once ...
GLOBAL_PER_HOUR = 20         # ... and at what rate the allowance refills
MAX_ADDRESSES = 4096


class TooManyAttempts(InspectorError):
    """Pairing refused for now; try again in :attr:`retry_after` seconds (whole, ≥ 1)."""

    def __init__(self, retry_after: float, why: str):
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"{why}; try again in {self.retry_after} s")


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


def address_key(peer: str) -> str:
    """The unit a limit applies to: the IPv4 address, an IPv6 /64, or the text as given."""
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def wait_after(failures: int) -> float:
    """Seconds an address waits after its ``failures``-th consecutive wrong code."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(2.0 ** (failures - FREE_FAILURES), MAX_WAIT_S)


class PairingThrottle:
    """The limits in the module doc. Thread-safe; every call is short (no sleeping).

    Use: :meth:`check` before comparing the code (raises :class:`TooManyAttempts`), then
    :meth:`failed` or :meth:`succeeded`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._tokens = float(GLOBAL_BURST)
        self._refilled = clock()

    def _refill(self, now: float) -> None:
        rate = GLOBAL_PER_HOUR / 3600.0
        self._tokens = min(float(GLOBAL_BURST), self._tokens + (now - self._refilled) * rate)
        self._refilled = now

    def check(self, peer: str) -> None:
        now = self._clock()
        key = address_key(peer)
        with self._lock:
            rec = self._records.get(key)
            if rec is not None and now - rec.last > FORGET_AFTER_S:
                del self._records[key]
                rec = None
            if rec is not None and now < rec.blocked_until:
                raise TooManyAttempts(rec.blocked_until - now,
                                      f"{rec.failures} wrong pairing codes from {key}")
            self._refill(now)
            if self._tokens < 1.0:
                raise TooManyAttempts((1.0 - self._tokens) * 3600.0 / GLOBAL_PER_HOUR,
                                      "too many wrong pairing codes on this agent lately")

    def failed(self, peer: str) -> float:
        """Record a wrong code; the seconds this address must now wait."""
        now = self._clock()
        key = address_key(peer)
        with self._lock:
            self._refill(now)
            self._tokens = max(0.0, self._tokens - 1.0)
            rec = self._records.get(key)
            if rec is None:
                if len(self._records) >= MAX_ADDRESSES:
                    oldest = sorted(self._records, key=lambda k: self._records[k].last)[:MAX_ADDRESSES // 8]
                    for k in oldest:
                        del self._records[k]
                rec = self._records[key] = _Record()
            rec.failures += 1
            rec.last = now
            wait = wait_after(rec.failures)
            rec.blocked_until = now + wait
            return wait

    def succeeded(self, peer: str) -> None:
        with self._lock:
            self._records.pop(address_key(peer), None)

    def failures(self, peer: str) -> int:
        with self._lock:
            rec = self._records.get(address_key(peer))
            return rec.failures if rec else 0
