"""How long a request body may take: a stall limit, a least rate after a grace, a deadline.

Only the time the service spends waiting for the client counts towards the rate: while the
app is busy elsewhere the server stops reading, and that pause is not the client's doing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.api.problems import problem_json
from service.settings import Settings


@dataclass(frozen=True)
class BodyPacing:
    """The limits on how a request body arrives."""

    stall_s: float  # most seconds between two chunks
    deadline_s: float  # most seconds for the whole body, from its first read
    grace_s: float  # seconds before the least rate applies
    min_bytes_per_s: int  # least average rate over the time spent waiting; 0: none

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyPacing:
        """The pacing the settings ask for."""
        return cls(
            settings.body_timeout_s,
            settings.body_deadline_s,
            settings.body_grace_s,
            settings.body_min_bytes_per_s,
        )


@dataclass
class BodyClock:
    """One request body's progress against its `BodyPacing`."""

    pacing: BodyPacing
    started: float = field(default_factory=time.monotonic)
    waited: float = 0.0  # seconds spent waiting for the client so far
    received: int = 0

    def allowance(self) -> tuple[float, str]:
        """Seconds the next wait for a chunk may last, and the limit that sets it."""
        pacing = self.pacing
        limits = [
            (pacing.stall_s, "stall"),
            (pacing.deadline_s - (time.monotonic() - self.started), "deadline"),
        ]
        if pacing.min_bytes_per_s > 0:
            # Apache's mod_reqtimeout rule: each `rate` bytes buys one more second of waiting.
            earned = pacing.grace_s + self.received / pacing.min_bytes_per_s
            limits.append((earned - self.waited, "rate"))
        return min(limits)

    def note(self, waited_s: float, size: int) -> None:
        """Record a wait of `waited_s` that brought `size` bytes."""
        self.waited += waited_s
        self.received += size

    def problem(self, reason: str) -> bytes:
        """The 408 problem (encoded) for a body cut off by the limit `reason` names."""
        pacing = self.pacing
        if reason == "rate":
            slug, title = "body-too-slow", "Request body too slow"
            detail = (
                f"the request body arrived slower than {pacing.min_bytes_per_s} bytes/s after "
                f"its first {pacing.grace_s} s (UNET_BODY_MIN_BYTES_PER_S, UNET_BODY_GRACE_S); "
                "send it faster"
            )
        elif reason == "deadline":
            slug, title = "body-deadline", "Request body too slow"
            detail = (
                f"the request body did not arrive within {pacing.deadline_s} s "
                "(UNET_BODY_DEADLINE_S); send it faster or in smaller requests"
            )
        else:
            slug, title = "body-timeout", "Request body timed out"
            detail = (
                f"the request body stalled for {pacing.stall_s} s (UNET_BODY_TIMEOUT_S); "
                "send it without pauses"
            )
        return problem_json(408, title, detail, slug=slug)
