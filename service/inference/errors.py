"""Why the inference engine could not answer, in its own terms rather than HTTP's.

Each error's message says what happened and what to do, for a person; `retry_after` is the
engine's guess, in whole seconds, of when trying again is worth it. The HTTP edge turns these
into problem details (`service.api.errors`); the calibration jobs and the tools act on them
directly.
"""

from __future__ import annotations


class EngineError(Exception):
    """The engine did not answer this image; `retry_after` seconds may change that."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        """`message` for a person; `retry_after` in whole seconds (None: retrying won't help)."""
        super().__init__(message)
        self.retry_after = retry_after


class EngineBusy(EngineError):
    """The model's queue was full, so the image was refused at once."""

    def __init__(self, model: str, queue_size: int, retry_after: int) -> None:
        """Model `model` already had `queue_size` images waiting."""
        super().__init__(
            f"model {model!r} already has {queue_size} requests waiting (UNET_QUEUE_SIZE); "
            f"retry after {retry_after} s",
            retry_after,
        )


class EngineTimeout(EngineError):
    """The image waited or ran longer than the deadline and was dropped."""

    def __init__(self, model: str, timeout: float | None, retry_after: int) -> None:
        """Model `model` did not answer within `timeout` seconds."""
        super().__init__(
            f"model {model!r} did not answer within {timeout} s (UNET_REQUEST_TIMEOUT_S) "
            f"because the service is busy; retry after {retry_after} s",
            retry_after,
        )


class EngineNotReady(EngineError):
    """The engine is starting or stopping, or stopped before it answered."""

    def __init__(self, message: str) -> None:
        """`message` says which; a second is enough for a start to finish."""
        super().__init__(message, retry_after=1)


class DeviceOutOfMemory(EngineError):
    """The device ran out of memory running the batch that held this image."""

    def __init__(self, model: str) -> None:
        """Running model `model`."""
        super().__init__(
            f"the device ran out of memory running model {model!r}; retry later "
            "or lower UNET_MAX_BATCH or UNET_TILE_SIZE",
            retry_after=5,
        )


class ModelUnavailable(EngineError):
    """The model failed to load at start-up; it stays unavailable until the card is fixed."""

    def __init__(self, model: str, reason: str) -> None:
        """Model `model` could not be loaded because of `reason` (one line naming the card)."""
        super().__init__(
            f"model {model!r} is unavailable: {reason}; fix it and restart the service",
            retry_after=None,
        )
