"""A live latency estimate per model: an EWMA that forgets with time.

Each observed call moves the estimate by ``alpha`` of the difference. A
model that gets no traffic (for instance because its estimate excludes it
from every ``max_latency_ms`` request) would otherwise keep a bad estimate
forever; so the distance from the configured prior halves every
``half_life_s`` without observations, and the model gets tried again.
Time comes from the injected clock.
"""

from __future__ import annotations

import math

from agentcore.clock import Clock

#: Seconds without observations for the estimate to move halfway back to the prior.
HALF_LIFE_S = 300.0


class LatencyEstimate:
    def __init__(
        self, prior_ms: float, alpha: float, clock: Clock, half_life_s: float = HALF_LIFE_S
    ) -> None:
        self.prior_ms = prior_ms
        self.alpha = alpha
        self.half_life_s = half_life_s
        self._clock = clock
        self._ms = prior_ms
        self._at = clock()

    @property
    def ms(self) -> float:
        """The current estimate in milliseconds."""
        idle = self._clock() - self._at
        if idle <= 0:
            return self._ms
        return self.prior_ms + (self._ms - self.prior_ms) * math.pow(0.5, idle / self.half_life_s)

    def observe(self, ms: float) -> None:
        current = self.ms
        self._ms = current + self.alpha * (ms - current)
        self._at = self._clock()
