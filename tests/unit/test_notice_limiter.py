"""The receiver's limit on repeated notices (failed TLS handshakes): one per address per minute, with a count."""

from __future__ import annotations

from appliance.router.receiver import NoticeLimiter


def test_one_notice_per_address_per_interval_then_the_count_held_back() -> None:
    limiter = NoticeLimiter(60.0)
    assert limiter.due("10.0.0.5", 0.0) == 0  # first: notify
    assert limiter.due("10.0.0.5", 1.0) is None  # quiet, counted
    assert limiter.due("10.0.0.5", 59.0) is None
    assert limiter.due("10.0.0.6", 2.0) == 0  # another address is not held back by the first
    assert limiter.due("10.0.0.5", 61.0) == 2  # next notice says two were not logged
    assert limiter.due("10.0.0.5", 62.0) is None


def test_memory_stays_bounded_under_a_flood_of_addresses() -> None:
    limiter = NoticeLimiter(60.0)
    for i in range(3 * NoticeLimiter.MAX_KEYS):
        assert limiter.due(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", float(i) / 1000) == 0
    assert len(limiter._last) <= NoticeLimiter.MAX_KEYS
