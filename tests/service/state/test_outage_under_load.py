"""PostgreSQL stopped for 15 s under load, with two service processes sharing it.

Three clients send masks, PUTs and GETs the whole time. While the database is down, inference
goes on, changes are refused with 503 and Retry-After, and nothing is acknowledged; once it is
back, changes succeed again by themselves and every acknowledged change is in the history.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from model.data.synth import generate_pair, pair_rng
from tests import postgres
from tests.helpers import TINY_MODEL, png
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

OUTAGE_S = 15.0
RECOVERY_S = 15.0  # PUTs must succeed again within this long of the database's return
CLIENTS = 3
BASE = f"/v1/models/{TINY_MODEL}"


@dataclass(frozen=True)
class Call:
    """One request a client made: when, what, and how it was answered."""

    sent: float
    answered: float
    kind: str  # mask, put or get
    status: int
    retry_after: str | None
    value: float | None = None  # the PUT's threshold


def client_loop(
    number: int, bases: list[str], image: bytes, calls: list[Call], stop: threading.Event
) -> None:
    """Masks, PUTs and GETs in turn, against each service in turn, until `stop`."""
    step = 0
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            base = bases[step % len(bases)] + BASE
            kind = ("mask", "put", "get")[step % 3]
            value = None
            sent = time.monotonic()
            try:
                if kind == "mask":
                    files = {"image": ("x.png", image, "image/png")}
                    answer = http.post(f"{base}/mask", files=files)
                elif kind == "put":
                    value = round(0.3 + number * 0.1 + step * 1e-5, 6)  # unique per call
                    answer = http.put(f"{base}/threshold", json={"value": value})
                else:
                    answer = http.get(f"{base}/threshold")
            except httpx.TransportError:
                calls.append(Call(sent, time.monotonic(), kind, 0, None, value))
            else:
                retry = answer.headers.get("retry-after")
                calls.append(Call(sent, time.monotonic(), kind, answer.status_code, retry, value))
            step += 1


def history_values(base: str) -> set[float]:
    """Every threshold value in the model's history, page by page."""
    values: set[float] = set()
    url: str | None = f"{base}{BASE}/threshold/history?limit=1000"
    while url is not None:
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200, page.text
        values |= {change["value"] for change in page.json()["changes"]}
        link = page.headers.get("link")
        url = link[1 : link.index(">")] if link else None
    return values


def test_a_postgresql_outage_under_load(
    database: tuple[str, postgres.Control], tiny_model_dir: Path, tmp_path: Path
) -> None:
    url, control = database
    image = png(generate_pair(pair_rng(7, 0), 64)[0])
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    services = []
    try:
        for n, workers in enumerate(("1", "1")):
            env = {"UNET_DATABASE_URL": url, "UNET_WORKERS": workers, "UNET_TILE_SIZE": "64"}
            services.append(
                ServiceProcess(
                    tiny_model_dir,
                    tmp_path / f"state-{n}",
                    env,
                    stderr=logs[n].open("w"),
                    ready_within_s=300,  # a loaded 2-core machine starts slowly
                )
            )
        bases = [service.base for service in services]
        calls: list[Call] = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=client_loop, args=(n, bases, image, calls, stop))
            for n in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        try:
            started = time.monotonic()
            while not any(c.kind == "put" and c.status == 200 for c in calls):
                assert time.monotonic() - started < 30, "no PUT succeeded before the outage"
                time.sleep(0.1)
            control.stop()
            down = time.monotonic()
            while time.monotonic() - down < OUTAGE_S:  # the outage's length, not a wait for work
                time.sleep(0.1)
            ready = [httpx.get(f"{base}/readyz", timeout=30) for base in bases]
            back_at = time.monotonic()
            control.start()
            back = time.monotonic()
            deadline = back + RECOVERY_S
            while not any(c.kind == "put" and c.status == 200 and c.sent > back for c in calls):
                assert time.monotonic() < deadline, "no PUT succeeded within 15 s of the return"
                time.sleep(0.1)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=60)
        values = history_values(bases[0])
    finally:
        for service in services:
            service.stop()

    assert all(r.status_code == 200 for r in ready), [r.text for r in ready]
    assert all(r.json()["state"].startswith("failing since ") for r in ready)
    bad = [c for c in calls if c.status == 0 or (c.status >= 500 and c.retry_after is None)]
    assert not bad, bad[:5]
    during = [c for c in calls if c.sent > down and c.answered < back_at]
    masks = [c for c in during if c.kind == "mask"]
    served = sum(c.status == 200 for c in masks)
    assert masks and served >= 0.95 * len(masks), f"{served} of {len(masks)} masks served"
    acknowledged = [c for c in during if c.kind == "put" and c.status == 200]
    assert not acknowledged, acknowledged[:5]
    assert {c.status for c in during if c.kind == "put"} == {503}
    missing = {c.value for c in calls if c.kind == "put" and c.status == 200} - values
    assert not missing, f"acknowledged PUTs missing from the history: {sorted(missing)[:5]}"
    for log in logs:
        text = log.read_text()
        # One line when the outage begins (two if the first try after the return still failed).
        outages = text.count("ERROR service.state.outage")
        tracebacks = text.count("Traceback")
        print(f"{log.name}: {len(text)} bytes, {outages} outage lines, {tracebacks} tracebacks")
        assert 1 <= outages <= 2 and tracebacks <= 2, text[-3000:]
    print(
        f"{len(calls)} calls; during the outage: {served}/{len(masks)} masks 200, "
        f"{len(during) - len(masks)} changes and reads refused or answered"
    )
