"""The environment the service starts in: `UNET_*` variables that no setting reads (typos)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from service.settings import ENV_PREFIX, Settings

# `UNET_*` variables that are the tooling's, not the service's: compose, CI, the benchmarks.
NOT_SETTINGS = frozenset(
    {
        "UNET_DB_PASSWORD",
        "UNET_REPLICAS",
        "UNET_PUBLISH",
        "UNET_SCREENSHOTS",
        "UNET_BENCH_LOOPBACK_ONLY",
    }
)


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """One message per `UNET_*` variable of `environ` that no setting reads, naming the closest."""
    known = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    messages = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX) or variable.upper() in NOT_SETTINGS:
            continue
        if variable.upper() in known:
            continue
        close = difflib.get_close_matches(variable.upper(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see the README's settings table"
        messages.append(f"{variable} is not a setting and is ignored{hint}")
    return messages
