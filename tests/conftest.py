"""Suite-wide: the order tests start in.

``make test`` runs every test, slow ones included, on two xdist workers that take the next test
from one queue as they finish (``--dist load --maxschedchunk 1``). The queue starts with the
longest tests: the chaos run (real peer processes, minutes), then the other slow tests (fuzzers),
then the process and network tests of ``integration/`` and ``adversary/`` (seconds each), then
the rest (mostly well under a second). One worker spends the chaos run there while the other
goes through the rest, and the end of the run is short tests on both workers, not a long test on
one of them. Within each class, collection order is kept (module fixtures stay together).
"""

from __future__ import annotations

import pytest

HEAVY = ("tests/integration/", "tests/adversary/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> int:
        slow = item.get_closest_marker("slow") is not None
        heavy = item.nodeid.startswith(HEAVY)
        return 0 if slow and heavy else 1 if slow else 2 if heavy else 3

    items.sort(key=order)  # stable
