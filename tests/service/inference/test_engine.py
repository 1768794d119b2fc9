"""The inference engine: batching, bounded queue, timeouts, tiling and a free event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import UNet, UNetConfig, save
from model.inference.predict import predict
from model.inference.tiling import predict_tiled
from service.api.errors import problem_for
from service.inference.engine import CoreShare, InferenceEngine
from service.inference.errors import EngineBusy, EngineNotReady, EngineTimeout
from service.inference.plan import plan_engine, usable_cores
from service.inference.registry import ModelRegistry, ServedModel
from service.ops.metrics import Metrics
from service.settings import Settings
from tests.helpers import running_engine, started_engine, until_async

pytestmark = pytest.mark.anyio
BOUND_S = 20.0  # no wait in these tests may take longer than this


@pytest.fixture
def anyio_backend() -> str:
    """The engine is asyncio code."""
    return "asyncio"


def make_registry(folder: Path, base_channels: int = 16, head: str = "sigmoid") -> ModelRegistry:
    """A registry serving one random-weight model `m` (speed does not depend on the weights)."""
    torch.manual_seed(0)
    channels = 2 if head == "softmax" else 1
    config = UNetConfig(depth=3, base_channels=base_channels, head=head, out_channels=channels)
    save(UNet(config).eval(), folder / "m.safetensors")
    return ModelRegistry.from_folder(folder, torch.device("cpu"))


def make_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings for a quick engine: small tiles keep the warm-up short.

    Torch runs the passes: these tests hold or watch them through `network.logits`. ONNX
    Runtime's passes have their own tests (test_backends.py).
    """
    values: dict[str, Any] = {
        "model_dir": folder,
        "state_dir": folder,
        "tile_size": 64,
        "backend": "torch",
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
async def registry(tmp_path: Path) -> ModelRegistry:
    """The default model: the served architecture (depth 3, 16 base channels)."""
    return make_registry(tmp_path)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random (1, H, W) float32 image in [0, 1]."""
    return np.random.default_rng(seed).random((1, height, width), dtype=np.float32)


def histogram(engine: InferenceEngine, name: str) -> tuple[float, float]:
    """(count, sum) of a per-model histogram of the engine's metrics."""
    count = engine.metrics.registry.get_sample_value(f"{name}_count", {"model": "m"})
    total = engine.metrics.registry.get_sample_value(f"{name}_sum", {"model": "m"})
    return count or 0.0, total or 0.0


class Gate:
    """Holds every forward pass of a model until opened: a stand-in for a busy device."""

    def __init__(self, served: ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = threading.Event()
        self.entered = 0
        original = served.network.logits

        def held(x: torch.Tensor) -> torch.Tensor:
            self.entered += 1
            self.opened.wait(BOUND_S)
            return original(x)

        monkeypatch.setattr(served.network, "logits", held)

    def open(self) -> None:
        """Let every held and future pass run."""
        self.opened.set()


async def hold_every_worker(
    engine: InferenceEngine, served: ServedModel, gate: Gate, wait: bool = False
) -> list[asyncio.Task[Any]]:
    """One request per worker, each held in its pass by `gate`, once every worker is busy."""
    workers = engine.plan.limits.workers
    held = [
        asyncio.create_task(engine.predict(served, image(32, 32), wait=wait))
        for _ in range(workers)
    ]
    await until_async(lambda: gate.entered == workers)
    return held


@pytest.fixture
async def batching(
    tmp_path: Path, registry: ModelRegistry
) -> AsyncIterator[tuple[InferenceEngine, ServedModel]]:
    """A started engine that gathers up to 4 images, waiting up to 200 ms, and its model."""
    settings = make_settings(tmp_path, max_batch=4, batch_wait_ms=200)
    async with running_engine(registry, settings) as engine:
        served = registry.get("m")
        assert served is not None
        yield engine, served


async def test_wait_ready_answers_when_the_warm_up_ends_and_false_once_stopped(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    engine = InferenceEngine(registry, make_settings(tmp_path), Metrics())
    early = asyncio.create_task(engine.wait_ready())  # waits from before the start
    await engine.start()
    try:
        assert await asyncio.wait_for(early, BOUND_S) is True
        assert await asyncio.wait_for(engine.wait_ready(), BOUND_S) is True
    finally:
        await engine.stop()
    assert await asyncio.wait_for(engine.wait_ready(), BOUND_S) is False


async def test_wait_ready_is_false_at_once_for_an_engine_stopped_before_its_warm_up(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    engine = InferenceEngine(registry, make_settings(tmp_path), Metrics())
    waiting = asyncio.create_task(engine.wait_ready())
    await engine.stop()
    assert await asyncio.wait_for(waiting, BOUND_S) is False


async def test_batches_gather_concurrent_requests_and_match_single_results(
    batching: tuple[InferenceEngine, ServedModel],
) -> None:
    engine, served = batching
    count_before, sum_before = histogram(engine, "unet_batch_size")
    images = [image(64, 64, seed) for seed in range(8)]
    results = await asyncio.gather(*(engine.predict(served, x) for x in images))
    count, total = histogram(engine, "unet_batch_size")
    # 8 concurrent images in batches of up to 4: far fewer passes than images.
    assert (total - sum_before) == 8
    assert (total - sum_before) / (count - count_before) > 1
    for x, result in zip(images, results, strict=True):
        single = predict(served.network, x)
        np.testing.assert_allclose(result.output, single.output, atol=1e-5)
        np.testing.assert_allclose(result.logits, single.logits, atol=1e-4)
    assert histogram(engine, "unet_inference_seconds")[0] >= count


async def test_run_finishes_each_request_in_the_worker_and_isolates_its_errors(
    batching: tuple[InferenceEngine, ServedModel],
) -> None:
    engine, served = batching
    loop_thread = threading.get_ident()

    def area(prediction: Any) -> tuple[int, float]:
        return threading.get_ident(), float(prediction.output.mean())

    def expected(x: np.ndarray) -> float:
        return pytest.approx(float(predict(served.network, x).output.mean()), rel=1e-5)

    def broken(prediction: Any) -> None:
        raise ValueError("this request's encoding failed")

    images = [image(64, 64, seed) for seed in range(4)]
    passes_before = histogram(engine, "unet_batch_size")[0]
    # Four requests in one batch; the third one's post-processing fails.
    results = await asyncio.gather(
        *(engine.run(served, x, broken if i == 2 else area) for i, x in enumerate(images)),
        return_exceptions=True,
    )
    assert histogram(engine, "unet_batch_size")[0] - passes_before == 1
    assert isinstance(results[2], ValueError)
    for i in (0, 1, 3):
        thread, fraction = results[i]  # type: ignore[misc]
        assert thread != loop_thread  # post-processing ran off the event loop
        assert fraction == expected(images[i])
    again = await engine.run(served, images[2], area)  # the engine carries on
    assert again[1] == expected(images[2])


async def test_mixed_sizes_each_get_their_own_full_size_answer(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    async with running_engine(
        registry, make_settings(tmp_path, max_batch=8, batch_wait_ms=50)
    ) as engine:
        served = registry.get("m")
        assert served is not None
        shapes = [(64, 64), (37, 50), (64, 64), (1, 1), (9, 130), (37, 50)]
        images = [image(h, w, seed) for seed, (h, w) in enumerate(shapes)]
        results = await asyncio.gather(*(engine.predict(served, x) for x in images))
        for x, result in zip(images, results, strict=True):
            assert result.output.shape == x.shape[1:] and result.output.dtype == np.float32
            np.testing.assert_allclose(result.output, predict(served.network, x).output, atol=1e-5)


async def test_full_queue_answers_503_with_retry_after_and_recovers(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_engine(registry, make_settings(tmp_path, queue_size=2)) as engine:
        served = registry.get("m")
        assert served is not None
        gate = Gate(served, monkeypatch)
        held = await hold_every_worker(engine, served, gate)
        queued = [asyncio.create_task(engine.predict(served, image(32, 32))) for _ in range(2)]
        await until_async(lambda: engine.queue_depth("m") == 2)
        with pytest.raises(EngineBusy) as refused:
            await engine.predict(served, image(32, 32))
        assert refused.value.retry_after >= 1
        problem = problem_for(refused.value)
        assert problem.status == 503 and problem.slug == "overloaded"
        assert problem.headers["Retry-After"] == str(refused.value.retry_after)
        assert (
            engine.metrics.registry.get_sample_value("unet_rejected_requests_total", {"model": "m"})
            == 1
        )
        gate.open()
        results = await asyncio.wait_for(asyncio.gather(*held, *queued), BOUND_S)
        assert all(r.output.shape == (32, 32) for r in results)
        recovered = await engine.predict(served, image(32, 32))  # load dropped: served again
        assert recovered.output.shape == (32, 32)
        assert engine.queue_depth("m") == 0


def sample(engine: InferenceEngine, name: str) -> float:
    """A per-model sample of the engine's metrics (0 when absent)."""
    return engine.metrics.registry.get_sample_value(name, {"model": "m"}) or 0.0


async def test_an_image_that_waits_takes_room_as_it_frees_and_has_no_deadline(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, queue_size=2, request_timeout_s=0.3)
    async with running_engine(registry, settings) as engine:
        served = registry.get("m")
        assert served is not None
        gate = Gate(served, monkeypatch)

        def waiting_for(x: np.ndarray) -> asyncio.Task[Any]:
            return asyncio.create_task(engine.predict(served, x, wait=True))

        held = await hold_every_worker(engine, served, gate, wait=True)
        queued = [waiting_for(image(32, 32)) for _ in range(2)]
        await until_async(lambda: engine.queue_depth("m") == 2)
        x = image(32, 32, seed=1)
        waiting = waiting_for(x)
        await until_async(lambda: sample(engine, "unet_queue_waiting") == 1)
        with pytest.raises(EngineBusy):  # a request is still refused at once
            await engine.predict(served, image(32, 32))
        await asyncio.sleep(2 * settings.request_timeout_s)
        assert not waiting.done()  # a request would have timed out by now
        gate.open()
        result = await asyncio.wait_for(waiting, BOUND_S)
        np.testing.assert_allclose(result.output, predict(served.network, x).output, atol=1e-5)
        await asyncio.wait_for(asyncio.gather(*held, *queued), BOUND_S)
        assert sample(engine, "unet_queue_waiting") == 0
        assert sample(engine, "unet_rejected_requests_total") == 1  # the request, only


async def test_stop_fails_an_image_waiting_for_room(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await started_engine(registry, make_settings(tmp_path, queue_size=1))
    served = registry.get("m")
    assert served is not None
    gate = Gate(served, monkeypatch)
    busy = await hold_every_worker(engine, served, gate, wait=True)
    busy.append(asyncio.create_task(engine.predict(served, image(32, 32), wait=True)))
    await until_async(lambda: engine.queue_depth("m") == 1)
    waiting = asyncio.create_task(engine.predict(served, image(32, 32), wait=True))
    await until_async(lambda: sample(engine, "unet_queue_waiting") == 1)
    stopping = asyncio.create_task(engine.stop())
    with pytest.raises(EngineNotReady):
        await asyncio.wait_for(waiting, BOUND_S)
    gate.open()  # let the running passes end, so that the stop can finish
    await asyncio.wait_for(stopping, BOUND_S)
    await asyncio.gather(*busy, return_exceptions=True)
    assert sample(engine, "unet_queue_waiting") == 0


async def test_timeout_answers_503_and_drops_the_waiting_job(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_engine(registry, make_settings(tmp_path, request_timeout_s=0.3)) as engine:
        served = registry.get("m")
        assert served is not None
        gate = Gate(served, monkeypatch)
        held = await hold_every_worker(engine, served, gate)
        with pytest.raises(EngineTimeout) as timed_out:
            await engine.predict(served, image(32, 32))  # waits in the queue past its deadline
        problem = problem_for(timed_out.value)
        assert problem.status == 503 and "Retry-After" in problem.headers
        assert engine.queue_depth("m") == 0  # dropped, never run
        entered = gate.entered
        gate.open()
        await asyncio.gather(*held, return_exceptions=True)  # those timed out too
        assert gate.entered == entered
        result = await engine.predict(served, image(32, 32))
        assert result.output.shape == (32, 32)


async def test_large_images_are_tiled_across_workers_like_the_reference(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, base_channels=4)
    settings = make_settings(tmp_path, tile_size=64, tile_threshold_pixels=100 * 100, max_batch=3)
    async with running_engine(registry, settings) as engine:
        served = registry.get("m")
        assert served is not None
        x = image(150, 203)
        count_before, _ = histogram(engine, "unet_batch_size")
        result = await engine.predict(served, x)
        count, _ = histogram(engine, "unet_batch_size")
        assert count - count_before > 1  # the tiles ran as several passes
        reference = predict_tiled(served.network, x, tile=64, overlap=settings.tile_overlap)
        assert result.output.shape == (150, 203)
        np.testing.assert_allclose(result.logits, reference.logits, atol=1e-5)
        expected = torch.sigmoid(torch.from_numpy(result.logits)).numpy()
        np.testing.assert_allclose(result.output, expected, atol=1e-6)


async def test_softmax_head_tiled_and_whole_share_the_reduction(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, base_channels=4, head="softmax")
    settings = make_settings(tmp_path, tile_threshold_pixels=80 * 80)
    async with running_engine(registry, settings) as engine:
        served = registry.get("m")
        assert served is not None
        small, large = image(40, 40), image(96, 120)
        whole, tiled = await asyncio.gather(
            engine.predict(served, small), engine.predict(served, large)
        )
        np.testing.assert_allclose(whole.output, predict(served.network, small).output, atol=1e-6)
        # Two-class softmax share == sigmoid of the logit difference, on both paths.
        for result in (whole, tiled):
            expected = torch.sigmoid(torch.from_numpy(result.logits)).numpy()
            np.testing.assert_allclose(result.output, expected, atol=1e-6)


async def test_inference_never_blocks_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(tmp_path, base_channels=8)
    settings = make_settings(tmp_path, tile_threshold_pixels=200 * 200)
    async with running_engine(registry, settings) as engine:
        served = registry.get("m")
        assert served is not None
        loop = asyncio.get_running_loop()
        original = served.network.logits
        loop_answered: list[bool] = []

        def pass_that_needs_the_loop(x: torch.Tensor) -> torch.Tensor:
            # The loop must run a callback while this pass is under way; were the pass on the
            # loop's thread, the callback could not run and the wait would run out.
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            loop_answered.append(ran.wait(BOUND_S))
            return original(x)

        monkeypatch.setattr(served.network, "logits", pass_that_needs_the_loop)
        # A whole image and a tiled one, concurrently.
        await asyncio.gather(
            engine.predict(served, image(192, 192)), engine.predict(served, image(320, 320))
        )
        assert len(loop_answered) >= 2 and all(loop_answered), loop_answered


async def test_stop_refuses_new_work_and_restores_torch_threads(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    threads = torch.get_num_threads()
    engine = await started_engine(registry, make_settings(tmp_path))
    served = registry.get("m")
    assert served is not None
    await engine.stop()
    assert not engine.ready and torch.get_num_threads() == threads
    with pytest.raises(EngineNotReady) as refused:
        await engine.predict(served, image(8, 8))
    problem = problem_for(refused.value)
    assert problem.status == 503 and problem.headers["Retry-After"] == "1"


def test_per_device_defaults(tmp_path: Path) -> None:
    cores = usable_cores()
    cpu = plan_engine(make_settings(tmp_path), torch.device("cpu"))
    assert (cpu.limits.max_batch, cpu.limits.wait_s, cpu.torch_threads) == (1, 0.0, 1)
    assert cpu.limits.workers == cores and cpu.autocast is None
    assert cpu.share_cores == (cores if cores > 1 else 0)
    cuda = plan_engine(make_settings(tmp_path, autocast="bf16"), torch.device("cuda"))
    assert cuda.limits.max_batch == 32 and 0 < cuda.limits.wait_s <= 0.005
    assert cuda.autocast == torch.bfloat16
    chosen = make_settings(tmp_path, max_batch=4, batch_wait_ms=0, torch_threads=2, queue_size=9)
    custom = plan_engine(chosen, torch.device("cpu"))
    assert (custom.limits.max_batch, custom.limits.wait_s, custom.limits.queue_size) == (4, 0, 9)
    assert custom.limits.workers == max(1, cores // 2) and custom.share_cores == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_batches_match_single_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save(UNet(UNetConfig(depth=3, base_channels=16)).eval(), tmp_path / "m.safetensors")
    registry = ModelRegistry.from_folder(tmp_path, torch.device("cuda"))
    for autocast in ("off", "bf16"):
        async with running_engine(registry, make_settings(tmp_path, autocast=autocast)) as engine:
            served = registry.get("m")
            assert served is not None
            images = [image(256, 256, seed) for seed in range(16)]
            results = await asyncio.gather(*(engine.predict(served, x) for x in images))
            tolerance = 1e-3 if autocast == "off" else 5e-2
            for x, result in zip(images, results, strict=True):
                single = predict(served.network, x)
                np.testing.assert_allclose(result.output, single.output, atol=tolerance)


def test_a_lone_pass_gets_every_core_and_concurrent_passes_share_them() -> None:
    previous = torch.get_num_threads()
    share, seen = CoreShare(4), []
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with share.share():
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(BOUND_S)

    def second() -> None:
        with share.share():
            seen.append(torch.get_num_threads())

    try:
        holder = threading.Thread(target=first)
        holder.start()
        assert inside.wait(BOUND_S)
        other = threading.Thread(target=second)
        other.start()
        other.join(BOUND_S)
        release.set()
        holder.join(BOUND_S)
        assert seen == [4, 2]
    finally:
        torch.set_num_threads(previous)  # torch also keeps the last value for new threads


def test_a_worker_keeps_its_share_when_another_changes_torchs_default() -> None:
    """torch seeds a thread's count at its first parallel op from the last value set anywhere."""
    previous = torch.get_num_threads()
    share, seen = CoreShare(4), []
    first_in, second_in, second_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:  # a fresh thread, like a new inference worker during warm-up
        with share.share():
            first_in.set()
            assert second_in.wait(BOUND_S)  # meanwhile another worker set 2 threads
            seen.append(torch.get_num_threads())  # this thread's first parallel op
        assert second_out.wait(BOUND_S)
        with share.share():  # alone again: every core
            seen.append(torch.get_num_threads())

    def second() -> None:
        with share.share():
            second_in.set()
        second_out.set()

    try:
        holder = threading.Thread(target=first)
        holder.start()
        assert first_in.wait(BOUND_S)
        other = threading.Thread(target=second)
        other.start()
        other.join(BOUND_S)
        holder.join(BOUND_S)
        assert seen == [4, 4]
    finally:
        torch.set_num_threads(previous)


def test_a_pass_keeps_to_one_core_while_other_work_waits() -> None:
    previous = torch.get_num_threads()
    waiting = [True]
    share, seen = CoreShare(4, crowded=lambda: waiting[0]), []
    try:
        for crowded in (True, False):
            waiting[0] = crowded
            worker = threading.Thread(target=_one_pass, args=(share, seen))
            worker.start()
            worker.join(BOUND_S)
        assert seen == [1, 4]  # queued work: the next pass starts at once, beside this one
    finally:
        torch.set_num_threads(previous)


def _one_pass(share: CoreShare, seen: list[int]) -> None:
    with share.share():
        seen.append(torch.get_num_threads())


async def test_workers_go_on_to_queued_work_while_the_event_loop_is_busy(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker: every pass after the first must be taken from the queue by the worker itself.
    settings = make_settings(tmp_path, torch_threads=usable_cores())
    async with running_engine(registry, settings) as engine:
        assert engine.plan.limits.workers == 1
        served = registry.get("m")
        assert served is not None
        gate = Gate(served, monkeypatch)
        tasks = [asyncio.create_task(engine.predict(served, image(32, 32))) for _ in range(3)]
        await until_async(lambda: gate.entered == 1 and engine.queue_depth("m") == 2)
        gate.open()
        deadline = time.monotonic() + BOUND_S
        while gate.entered < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # the event loop is blocked: no task of it can hand out work
        assert gate.entered == 3
        results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S)
        assert all(r.output.shape == (32, 32) for r in results)
