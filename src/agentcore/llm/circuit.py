"""A circuit breaker per model: stop calling what keeps failing, try again later.

::

    closed --(failures consecutive failures)--> open
    open --(cooldown_s elapsed)--> half_open: one trial call at a time
    half_open --success--> closed      half_open --failure--> open (cooldown again)

Only provider failures count (5xx, 429, timeouts, connection errors); a
request the provider refuses as malformed proves it is up and counts as a
success. Time comes from the injected clock, so tests move it instead of
sleeping. One breaker per worker process: each worker learns on its own.
"""

from __future__ import annotations

from typing import Literal

from agentcore.clock import Clock

State = Literal["closed", "open", "half_open"]


class Circuit:
    def __init__(self, failures: int, cooldown_s: float, clock: Clock) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state: State = "closed"
        #: Failures in a row since the last success.
        self.consecutive = 0
        self._opened_at = 0.0
        self._trial = False

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() >= self._opened_at + self.cooldown_s:
            self._state = "half_open"
            self._trial = False
        return self._state

    def available(self) -> bool:
        """Whether a call may be tried now (half-open: only while no trial is running)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial)

    def retry_in_s(self) -> float:
        """Seconds until an open circuit half-opens (0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def begin(self) -> bool:
        """Claim the call about to be made; False when another trial holds a half-open circuit."""
        if not self.available():
            return False
        if self._state == "half_open":
            self._trial = True
        return True

    def succeeded(self) -> None:
        self._state = "closed"
        self.consecutive = 0
        self._trial = False

    def failed(self) -> None:
        self.consecutive += 1
        if self._state == "half_open" or self.consecutive >= self.failures:
            self._state = "open"
            self._opened_at = self._clock()
        self._trial = False

    def abandoned(self) -> None:
        """The call ended without a verdict (the caller went away): free the trial."""
        self._trial = False
