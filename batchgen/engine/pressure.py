"""How many jobs to keep in flight: additive increase, multiplicative decrease.

Pure arithmetic, no clock and no I/O.  The user's ``--concurrency`` is the ceiling and
is never exceeded.  A 429 that names the server's parallel-job limit
(``details.actionLimit``) lowers the cap to it at once; a 429 without one halves the
cap; every ``cap`` successful submissions in a row raise it by one, so it climbs back
once the pressure is gone.
"""

from __future__ import annotations


class InFlightCap:
    def __init__(self, ceiling: int) -> None:
        if ceiling < 1:
            raise ValueError("the ceiling must be at least 1")
        self.ceiling = ceiling
        self.current = ceiling
        self._successes = 0

    def rate_limited(self, action_limit: int | None) -> int:
        if action_limit is not None and action_limit >= 1:
            self.current = min(self.current, action_limit, self.ceiling)
        else:
            self.current = max(1, self.current // 2)
        self._successes = 0
        return self.current

    def submitted(self) -> int:
        self._successes += 1
        if self.current < self.ceiling and self._successes >= self.current:
            self.current += 1
            self._successes = 0
        return self.current
