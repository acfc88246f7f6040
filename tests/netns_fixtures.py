"""pytest plugin for network-namespace LAN tests (see ``netns.py``).

Hook it in from tests/conftest.py with ``pytest_plugins = ["netns_fixtures"]``.

Provides
--------
``lan``            factory ``lan(subnet="10.77.0.0/24", **kw) -> netns.Lan`` (kw: e.g.
                   ``ipv6_only=True``); every LAN it made is torn
                   down when the test ends, pass or fail. Skips the test (with the reason) when
                   not root or ``ip`` is missing.
marker ``netns``   for tests that build namespaces (select with ``-m netns`` / ``-m "not netns"``).
collection end     removes stale ``mcc*`` namespaces whose owner process is gone (a crashed
                   run), when the session will run namespace tests (a unit-test run never
                   touches the machine's namespaces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import netns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "netns: builds network namespaces (root and iproute2 needed)"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Clear leftovers of a crashed run before any selected test creates namespaces."""
    builds_namespaces = any(
        item.get_closest_marker("netns") is not None or "lan" in getattr(item, "fixturenames", ())
        for item in session.items
    )
    if builds_namespaces and netns.unavailable_reason() is None:
        netns.sweep_stale()


def skip_unless_netns() -> None:
    """Skip the calling test when namespaces cannot be built here (not root / no `ip`)."""
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lan() -> Iterator[Callable[..., netns.Lan]]:
    """Factory for LANs that are always torn down after the test, even when it fails."""
    skip_unless_netns()
    made: list[netns.Lan] = []

    def make(subnet: str = netns.DEFAULT_SUBNET, **kw: Any) -> netns.Lan:
        made.append(netns.Lan(subnet, **kw))
        return made[-1]

    try:
        yield make
    finally:
        errors = []
        for each in reversed(made):
            try:
                each.close()
            except netns.NetnsError as exc:
                errors.append(str(exc))
        if errors:
            pytest.fail("; ".join(errors), pytrace=False)
