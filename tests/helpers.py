"""Plain helpers shared by test modules, so that no test module imports another."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import re
import struct
import subprocess
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from httpx import Response
from PIL import Image
from sqlalchemy import Engine, event
from torch import nn

from model.data.synth import generate_pair, pair_rng
from service.inference.engine import InferenceEngine
from service.inference.registry import ModelRegistry
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.store import ThresholdStore

TINY_MODEL = "tiny"  # the model the `tiny_model_dir` fixture serves
PROBLEM = "application/problem+json"
BOUND_S = 60.0  # no wait for something to happen may take longer than this
CALIBRATION_S = 3 * BOUND_S  # nor may a calibration of a test data set, queue included
ENDED = ("succeeded", "failed")  # the statuses a calibration ends in

# What the README ("The calibration report") promises in a report and in each operating point.
REPORT_KEYS = {
    "threshold",
    "strategy",
    "target",
    "auc",
    "average_precision",
    "n_images",
    "n_pixels",
    "positive_fraction",
    "is_probability",
    "roc",
    "operating_points",
    "confusion",
    "threshold_ci",
    "brier",
    "ece",
    "reliability",
    "warnings",
}
POINT_KEYS = {"threshold", "tpr", "fpr", "precision", "f1", "iou", "youden_j"}
# The shipped checkpoints' digests, which their stored thresholds belong to. A change is a release
# note: every deployment's thresholds for that model stop applying (README, "The shipped models").
SHIPPED_DIGESTS = {
    "unet-sigmoid": "80ffbe813912d924447d4ea4e0dc245cf03d7a5780f7ae73096d7b6b5a93d7c9",
    "unet-relu": "03b581229161b47a1bcc81aecc88b81ba4adce494bea11804d635c943a5aba71",
}
# Their digests in the releases whose JSON still carried the `preprocessing` stamp.
STAMPED_DIGESTS = {
    "unet-sigmoid": "dc4b7968da3c960bce41ef30d394d9a1500d89506235f28ef88f7bb3d2ca6f77",
    "unet-relu": "5cabdf4ee1ed546f3055d7ffc379cf2bc019b3a40bde88d57742ae074d3a51a5",
}
# The parameters the calibration tests give the target and cost strategies.
TARGETS = {"target_tpr": 0.9, "target_fpr": 0.05, "target_precision": 0.8}
COSTS = {"cost_fp": 1.0, "cost_fn": 4.0}


# Images and data sets ----------------------------------------------------------------------


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    """`array` encoded as PNG; a bool mask becomes 0/255."""
    pixels = array.astype(np.uint8) * 255 if array.dtype == bool else array
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_files(n: int = 3, size: int = 64, prefix: str = "", seed: int = 1) -> dict[str, bytes]:
    """Zip member name -> bytes of a synthetic data set."""
    files = {}
    for i in range(n):
        image, mask = generate_pair(pair_rng(seed, i), size)
        files[f"{prefix}images/{i:04d}.png"] = png(image)
        files[f"{prefix}masks/{i:04d}.png"] = png(mask)
    return files


def make_zip(
    files: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo, bytes]] | None = None
) -> bytes:
    """A zip of `files` (deflated) plus hand-made entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for info, data in extra or []:
            archive.writestr(info, data)
    return buffer.getvalue()


def patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """`data` with one field of `name`'s central directory record replaced (forged headers)."""
    encoded = name.encode()
    at = data.index(b"PK\x01\x02")
    while struct.unpack_from("<H", data, at + 28)[0] != len(encoded) or (
        data[at + 46 : at + 46 + len(encoded)] != encoded
    ):
        at = data.index(b"PK\x01\x02", at + 4)
    patched = bytearray(data)
    struct.pack_into(fmt, patched, at + offset, value)
    return bytes(patched)


def patch_central_size(data: bytes, name: str, size: int) -> bytes:
    """`data` with the uncompressed size the central directory declares for `name` replaced."""
    return patch_central(data, name, 24, "<I", size)


# HTTP ---------------------------------------------------------------------------------------


def assert_problem(response: Response, status: int) -> dict[str, Any]:
    """`response` is an RFC 9457 problem with `status` that says what went wrong; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


# What an HTML page or a script loads: src/href attributes, CSS url()s and ES module imports.
LOADS = re.compile(r"""(?:src|href)=["']([^"']+)["']|url\(["']?([^"')]+)|from ["']([^"']+)["']""")
REMOTE = re.compile(r"https?://|//[a-z]")  # a URL on another host


def loaded(text: str) -> list[str]:
    """Every URL that the HTML, CSS or script `text` loads."""
    return [next(group for group in match.groups() if group) for match in LOADS.finditer(text)]


# Waiting -------------------------------------------------------------------------------------


def until(condition: Callable[[], bool], what: str = "condition not reached in time") -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen within BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


async def until_async(
    condition: Callable[[], bool], what: str = "condition not reached in time"
) -> None:
    """Yield to the event loop until `condition` holds; fail after BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def wait_for_calibration(
    read: Callable[[], dict[str, Any]], statuses: tuple[str, ...] = ENDED
) -> dict[str, Any]:
    """The calibration `read` returns, once its status is in `statuses`; fail after CALIBRATION_S.

    `read` fetches it the caller's way, e.g. `lambda: client.get(location).json()`.
    """
    deadline = time.monotonic() + CALIBRATION_S
    while (job := read())["status"] not in statuses:
        assert time.monotonic() < deadline, f"calibration still {job['status']}"
        time.sleep(0.05)  # the service's own progress: nothing to wait on but its answer
    return job


# The inference engine ------------------------------------------------------------------------


async def started_engine(registry: ModelRegistry, settings: Settings) -> InferenceEngine:
    """An engine that has finished its warm-up; the caller stops it."""
    engine = InferenceEngine(registry, settings, Metrics())
    await engine.start()
    assert engine.ready
    return engine


@asynccontextmanager
async def running_engine(
    registry: ModelRegistry, settings: Settings
) -> AsyncIterator[InferenceEngine]:
    """A warmed-up engine for the `async with` block, stopped after it."""
    engine = await started_engine(registry, settings)
    try:
        yield engine
    finally:
        await engine.stop()


# The threshold store -------------------------------------------------------------------------


def trace_sql(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(thread id, statement) of every SQL statement run by stores opened from now on."""
    statements: list[tuple[int, str]] = []
    open_engine = ThresholdStore._open_engine

    def traced(store: ThresholdStore, url: str) -> Engine:
        engine = open_engine(store, url)

        def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            statements.append((threading.get_ident(), sql))

        event.listen(engine, "before_cursor_execute", record)
        return engine

    monkeypatch.setattr(ThresholdStore, "_open_engine", traced)
    return statements


# Calibration -----------------------------------------------------------------------------------


def raw_objective(
    strategy: str, tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray]:
    """The criterion a strategy maximises at each raw threshold, and where its constraint holds."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    tpr, fpr = tp / n_pos, fp / n_neg
    always = np.ones_like(tp, dtype=bool)
    if strategy == "youden":
        return tpr - fpr, always
    if strategy == "closest":
        return -np.hypot(fpr, 1 - tpr), always
    if strategy == "f1":
        return 2 * tp / (tp + fp + n_pos), always
    if strategy == "cost":
        return -(COSTS["cost_fp"] * fp + COSTS["cost_fn"] * (n_pos - tp)) / (n_pos + n_neg), always
    if strategy == "target_tpr":
        return -fpr, tpr >= TARGETS[strategy]
    if strategy == "target_fpr":
        return tpr, fpr <= TARGETS[strategy]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return tpr, precision >= TARGETS[strategy]


@contextmanager
def mounted_tmpfs(mount: Path, size_mib: int) -> Iterator[Path]:
    """An empty tmpfs of `size_mib` at `mount` (skips the test where none can be mounted)."""
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path, name: str) -> Path:
    """Write `folder/name` until its disk is full; returns the file."""
    filler = folder / name
    with filler.open("wb") as sink:
        try:
            while True:
                sink.write(bytes(1 << 16))
                sink.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def write_card(folder: Path, name: str, card: dict[str, Any]) -> Path:
    """`card` as `folder/NAME.json`; NaN and infinities are written as JSON's extensions."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))  # allow_nan: writes NaN, Infinity as Python's json does
    return path


def scripted(folder: Path, module: nn.Module, name: str) -> str:
    """`module` saved with torch.jit.save in `folder`; its file name."""
    torch.jit.save(torch.jit.script(module.eval()), str(folder / f"{name}.pt"))
    return f"{name}.pt"
