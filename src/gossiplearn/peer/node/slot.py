"""The one-exchange slot: a node takes part in one model exchange at a time, pairwise
(``node/exchanges.py``) or in a secure group round (``node/group.py``), which share it.

Invariants:
- ``take`` and ``release`` pair up in one task (a ``finally`` releases); whoever decides to take
  the slot takes it with no checkpoint in between, so two exchanges never both see it free.
- Once ``closing`` is set it is never cleared: the node is stopping and starts or accepts no
  exchange; ``close`` waits (up to a grace) for the one in flight.
"""

from __future__ import annotations

import trio

from gossiplearn.errors import LocalProtocolError


class ExchangeSlot:
    def __init__(self) -> None:
        self.busy = False
        self.closing = False
        self._idle = trio.Event()
        self._idle.set()

    def take(self) -> None:
        """Take the free slot. Raises ``LocalProtocolError`` if it is taken."""
        if self.busy:
            raise LocalProtocolError("the exchange slot is taken")
        self.busy = True
        self._idle = trio.Event()

    def release(self) -> None:
        self.busy = False
        self._idle.set()

    async def close(self, grace: float) -> None:
        """Decline new exchanges; wait up to ``grace`` s for the one in flight to finish."""
        self.closing = True
        with trio.move_on_after(grace):
            await self._idle.wait()
