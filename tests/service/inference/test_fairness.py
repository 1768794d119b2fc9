"""Models share the inference workers fairly: turns between models and a per-model worker cap."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import UNet, UNetConfig, save
from service.inference import plan as plan_module
from service.inference.batching import (
    Batcher,
    BatchLimits,
    Job,
    Stopped,
    WorkerPool,
    model_worker_cap,
)
from service.inference.engine import InferenceEngine
from service.inference.plan import plan_engine
from service.inference.registry import ModelRegistry, ServedModel
from service.ops.metrics import Metrics
from service.settings import Settings
from tests.helpers import running_engine, until_async

pytestmark = pytest.mark.anyio
BOUND_S = 20.0  # no wait in these tests may take longer than this


@pytest.fixture
def anyio_backend() -> str:
    """The engine is asyncio code."""
    return "asyncio"


def two_models(folder: Path, names: tuple[str, ...] = ("a", "b")) -> ModelRegistry:
    """A registry serving small random-weight models `a` and `b`."""
    torch.manual_seed(0)
    for name in names:
        save(UNet(UNetConfig(depth=2, base_channels=4)).eval(), folder / f"{name}.safetensors")
    return ModelRegistry.from_folder(folder, torch.device("cpu"))


def settings(folder: Path, **overrides: Any) -> Settings:
    """Torch passes (these tests hold them through `network.logits`), small tiles."""
    values: dict[str, Any] = {
        "model_dir": folder,
        "state_dir": folder,
        "tile_size": 64,
        "tile_threshold_pixels": 100 * 100,
        "backend": "torch",
    }
    return Settings(**{**values, **overrides})


def image(height: int, width: int) -> np.ndarray:
    """A random (1, H, W) float32 image in [0, 1]."""
    return np.random.default_rng(0).random((1, height, width), dtype=np.float32)


class Passes:
    """Records which model each forward pass ran for; holds model `held`'s passes until opened."""

    def __init__(self, registry: ModelRegistry, held: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.order: list[str] = []
        self.threads: list[int] = []  # torch threads each held pass ran with
        self.entered = 0  # passes of `held` started
        self.opened = threading.Event()
        self._lock = threading.Lock()
        for served in registry:
            monkeypatch.setattr(served.network, "logits", self._wrap(served, served.name == held))

    def _wrap(self, served: ServedModel, hold: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        original = served.network.logits

        def logits(x: torch.Tensor) -> torch.Tensor:
            with self._lock:
                self.order.append(served.name)
                if hold:
                    self.entered += 1
                    self.threads.append(torch.get_num_threads())
            if hold:
                self.opened.wait(BOUND_S)
            return original(x)

        return logits

    def open(self) -> None:
        """Let every held and future pass run."""
        self.opened.set()


@asynccontextmanager
async def engine_on(
    registry: ModelRegistry, values: Settings, cores: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InferenceEngine]:
    """A warmed-up engine planned as if the machine had `cores` usable cores."""
    monkeypatch.setattr(plan_module, "usable_cores", lambda: cores)
    async with running_engine(registry, values) as engine:
        yield engine


async def test_a_backlog_of_tiles_delays_another_model_by_one_pass_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_models(tmp_path)
    # One worker: without turns, the other model's request waits for every tile queued before it.
    async with engine_on(registry, settings(tmp_path), 1, monkeypatch) as engine:
        a, b = registry.get("a"), registry.get("b")
        assert a is not None and b is not None
        passes = Passes(registry, "a", monkeypatch)
        large = asyncio.create_task(engine.predict(a, image(300, 300)))  # 36 tiles of 64 px
        await until_async(lambda: passes.entered == 1)
        assert engine.queue_depth("a") == 1  # its other tiles wait
        small = asyncio.create_task(engine.predict(b, image(32, 32)))
        await until_async(lambda: engine.queue_depth("b") == 1)
        passes.open()
        result = await asyncio.wait_for(small, BOUND_S)
        assert result.output.shape == (32, 32)
        assert passes.order.index("b") == 1, passes.order  # right after the pass that ran
        await asyncio.wait_for(large, BOUND_S)
        assert passes.order.count("a") == 36


async def test_a_model_holding_its_cap_leaves_a_worker_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_models(tmp_path)
    async with engine_on(registry, settings(tmp_path), 2, monkeypatch) as engine:
        assert engine.plan.limits.workers == 2 and engine.plan.limits.per_model == 1
        a, b = registry.get("a"), registry.get("b")
        assert a is not None and b is not None
        passes = Passes(registry, "a", monkeypatch)
        held = [asyncio.create_task(engine.predict(a, image(32, 32))) for _ in range(3)]
        await until_async(lambda: passes.entered == 1 and engine.queue_depth("a") == 2)
        # `a` is stuck in its pass with work queued; `b` is answered all the same.
        result = await asyncio.wait_for(engine.predict(b, image(32, 32)), BOUND_S)
        assert result.output.shape == (32, 32)
        assert passes.entered == 1 and engine.queue_depth("a") == 2
        # Work held back by the cap starts no pass, so `a`'s lone pass took every core.
        assert passes.threads == [2]
        passes.open()
        results = await asyncio.wait_for(asyncio.gather(*held), BOUND_S)
        assert all(r.output.shape == (32, 32) for r in results)


async def test_a_lone_model_uses_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_models(tmp_path, names=("a",))
    async with engine_on(registry, settings(tmp_path), 2, monkeypatch) as engine:
        assert engine.plan.limits.per_model == 2
        a = registry.get("a")
        assert a is not None
        passes = Passes(registry, "a", monkeypatch)
        held = [asyncio.create_task(engine.predict(a, image(32, 32))) for _ in range(3)]
        await until_async(lambda: passes.entered == 2 and engine.queue_depth("a") == 1)
        passes.open()
        await asyncio.wait_for(asyncio.gather(*held), BOUND_S)


async def test_the_setting_lets_one_model_take_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_models(tmp_path)
    values = settings(tmp_path, model_max_workers=2)
    async with engine_on(registry, values, 2, monkeypatch) as engine:
        a = registry.get("a")
        assert a is not None
        passes = Passes(registry, "a", monkeypatch)
        held = [asyncio.create_task(engine.predict(a, image(32, 32))) for _ in range(2)]
        await until_async(lambda: passes.entered == 2)
        passes.open()
        await asyncio.wait_for(asyncio.gather(*held), BOUND_S)


def test_per_model_cap_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [model_worker_cap(None, workers, 2) for workers in (1, 2, 4)] == [1, 1, 3]
    assert [model_worker_cap(None, workers, 1) for workers in (1, 2, 4)] == [1, 2, 4]
    assert model_worker_cap(3, 2, 2) == 2 and model_worker_cap(1, 4, 1) == 1
    monkeypatch.setattr(plan_module, "usable_cores", lambda: 4)
    cpu = plan_engine(settings(tmp_path), torch.device("cpu"), models=3)
    assert (cpu.limits.workers, cpu.limits.per_model) == (4, 3)
    cuda = plan_engine(settings(tmp_path), torch.device("cuda"), models=2)
    assert (cuda.limits.workers, cuda.limits.per_model) == (2, 1)
    chosen = plan_engine(settings(tmp_path, model_max_workers=2), torch.device("cpu"), models=3)
    assert chosen.limits.per_model == 2


async def test_only_work_that_will_run_beside_a_pass_crowds_it() -> None:
    """A capped model's own backlog leaves its lone pass every core; a lone model's does not."""
    pool = WorkerPool(2)  # not started: the test sets what the workers hold

    def batcher(name: str, per_model: int) -> Batcher:
        limits = BatchLimits(
            max_batch=1, wait_s=0, workers=2, queue_size=8, model_workers=per_model
        )
        return Batcher(name, limits, lambda units: [], pool, Metrics())

    capped, lone = batcher("capped", 1), batcher("lone", 2)
    jobs = [Job(key=(1, 8, 8), units=4), Job(key=(1, 8, 8))]
    capped.submit(jobs[0])
    capped.running = 1  # it holds its one worker: its backlog waits for that pass to end
    assert not pool.startable() and not pool.crowded()
    capped.running = 0  # its worker is free: the backlog starts at once
    assert pool.startable() and pool.crowded()
    capped.running = 1
    lone.submit(jobs[1])
    lone.running = 2  # both workers busy; its next pass starts as soon as either is free
    assert not pool.startable() and pool.crowded()
    for each in (capped, lone):
        await each.stop()
    assert all(isinstance(job.future.exception(), Stopped) for job in jobs)
