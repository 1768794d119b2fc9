"""Synthetic fluorescence-microscopy nuclei: the embedded default data set.

The images carry the ambiguities of real microscopy on purpose, so that the choice of threshold
matters: an uneven background that defeats one global cut-off, faint nuclei that are labelled,
bright debris that is not, optical blur, shot and read noise, and a pixel or so of annotator
disagreement along every border. Image `i` of seed `s` depends on `(s, i)` alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

MIN_SIZE = 8
# Blurred debris intensity (on the 0..1 signal scale, about 25 grey levels) from which a pixel is
# labelled debris: well above the background's noise, so what is labelled is visible.
DEBRIS_LEVEL = 0.1
# The classes `generate_labelled` can mark, and the label value of each.
SYNTH_CLASSES: dict[str, int] = {"nucleus": 1, "debris": 2}
_AREA = 128 * 128  # object and debris counts below are per image of this area


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise low-passed at `sigma` px and rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark level plus an illumination gradient and broad glow: no single cut-off fits it all."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    # A coarse random grid, zoomed up: cheap low-frequency blobs at any image size.
    cells = max(2, round(size / 40))
    glow = ndimage.zoom(rng.standard_normal((cells, cells)), size / cells, order=3)[:size, :size]
    glow = glow - glow.min()
    glow /= max(float(glow.max()), 1e-12)
    base = rng.uniform(0.06, 0.14)
    return base + rng.uniform(0.10, 0.25) * ramp + rng.uniform(0.08, 0.22) * glow


def _nucleus(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float
) -> np.ndarray:
    """Signed distance in px (positive inside) of an irregular ellipse centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx) - rng.uniform(0, np.pi)
    elongation = rng.uniform(1.0, 1.6)
    a, b = radius * np.sqrt(elongation), radius / np.sqrt(elongation)
    edge = a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))
    for k in (2, 3, 4, 5):
        edge = edge * (1 + rng.uniform(0, 0.12 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)))
    return np.asarray(edge - rho)


def _centres(rng: np.random.Generator, size: int, radii: np.ndarray) -> list[tuple[float, float]]:
    """Object centres; about a third lean on an earlier object so that they touch or overlap."""
    centres: list[tuple[float, float]] = []
    for radius in radii:
        if centres and rng.random() < 0.35:
            j = int(rng.integers(len(centres)))
            gap = (radius + radii[j]) * rng.uniform(0.75, 1.0)
            angle = rng.uniform(0, 2 * np.pi)
            cy, cx = centres[j][0] + gap * np.sin(angle), centres[j][1] + gap * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, size, size=2)
        centres.append((float(np.clip(cy, 0, size - 1)), float(np.clip(cx, 0, size - 1))))
    return centres


def _add_debris(
    rng: np.random.Generator, canvas: np.ndarray, count: int, debris: np.ndarray | None = None
) -> None:
    """Bright specks and fibres, unlabelled: what a global threshold wrongly keeps.

    With `debris`, each speck's intensity is added there too (no extra random draws), so that
    the classes' label image can mark it.
    """
    size = canvas.shape[0]
    for _ in range(count):
        length = 0.0 if rng.random() < 0.6 else rng.uniform(8, 24)
        width = rng.uniform(0.6, 1.4) if length else rng.uniform(0.9, 2.0)
        y0, x0 = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, np.pi)
        y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
        pad = 4 * width + 1
        top, left = int(max(0, min(y0, y1) - pad)), int(max(0, min(x0, x1) - pad))
        bottom, right = int(min(size, max(y0, y1) + pad)), int(min(size, max(x0, x1) + pad))
        if bottom <= top or right <= left:
            continue
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float64)
        # Distance to the segment (a point when length is 0).
        t = ((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / max(length**2, 1e-12)
        t = np.clip(t, 0, 1)
        dist2 = (yy - y0 - t * (y1 - y0)) ** 2 + (xx - x0 - t * (x1 - x0)) ** 2
        speck = rng.uniform(0.45, 0.9) * np.exp(-dist2 / (2 * width**2))
        canvas[top:bottom, left:right] += speck
        if debris is not None:
            debris[top:bottom, left:right] += speck


def generate_pair(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8, H x W) and its annotated mask (bool, H x W)."""
    image, mask, _ = render(rng, size)
    return image, mask


def render(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, annotated mask and the true signed distance to the nearest outline (px, + inside).

    The annotation differs from `truth > 0` by the border jitter; benchmarks use `truth` to
    measure how far label noise alone caps Dice and AUC.
    """
    image, mask, truth, _ = _render(rng, size, with_debris=False)
    return image, mask, truth


def generate_labelled(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The image `generate_pair` draws (same `rng`, same pixels) and its label image (uint8).

    Labels: 0 background, 1 nucleus (exactly `generate_pair`'s mask), 2 debris: where the blurred
    debris alone is brighter than DEBRIS_LEVEL, outside every nucleus.
    """
    image, mask, _, debris = _render(rng, size, with_debris=True)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    assert debris is not None
    labels[debris >= DEBRIS_LEVEL] = 2
    labels[mask] = 1
    return image, labels


def generate_instances(
    rng: np.random.Generator, size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image and mask `generate_pair` draws (same `rng`) and its instance labels (uint16).

    Labels: 0 background, 1..N one per nucleus, numbered in drawing order with hidden ones
    skipped. Where nuclei overlap, a pixel belongs to the one it lies deepest inside; the
    labels' union is exactly the mask.
    """
    owner = np.zeros((size, size), dtype=np.uint16) if size >= MIN_SIZE else None
    image, mask, _, _ = _render(rng, size, with_debris=False, owner=owner)
    assert owner is not None
    instances = np.where(mask, owner, 0)
    present = np.unique(instances[instances > 0])
    renumber = np.zeros(int(instances.max(initial=0)) + 1, dtype=np.uint16)
    renumber[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    return image, mask, renumber[instances]


def _render(
    rng: np.random.Generator, size: int, with_debris: bool, owner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """`render`'s image, mask and truth, plus the blurred debris intensity when asked for.

    With `owner`, each pixel is marked with the 1-based number of the nucleus it lies deepest
    inside (no extra random draws, so the pixels stay the same).
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    scale = size * size / _AREA
    signal = _background(rng, size)
    mask = np.zeros((size, size), dtype=bool)
    truth = np.full((size, size), -np.inf)
    # The annotator's border: the true outline moved by a smooth field of about +-1 px.
    border_jitter = 0.8 * _smooth_noise(rng, (size, size), sigma=2.0)
    texture = _smooth_noise(rng, (size, size), sigma=1.5)

    n_objects = int(rng.poisson(10 * scale))
    radii = rng.uniform(6, 18, size=n_objects)
    for number, ((cy, cx), radius) in enumerate(
        zip(_centres(rng, size, radii), radii, strict=True), start=1
    ):
        reach = 1.7 * radius + 4
        top, bottom = int(max(0, cy - reach)), int(min(size, cy + reach + 1))
        left, right = int(max(0, cx - reach)), int(min(size, cx + reach + 1))
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float64)
        sdf = _nucleus(rng, yy, xx, cy, cx, radius)
        window = (slice(top, bottom), slice(left, right))
        mask[window] |= sdf + border_jitter[window] > 0
        if owner is not None:
            owner[window][sdf > truth[window]] = number
        truth[window] = np.maximum(truth[window], sdf)

        faint = rng.random() < 0.25
        contrast = rng.uniform(0.025, 0.09) if faint else rng.uniform(0.22, 0.6)
        # Chromatin texture and a centre-to-rim profile that differs from nucleus to nucleus.
        depth = np.clip(sdf / radius, 0, 1)
        profile = 1 + rng.uniform(-0.35, 0.35) * (depth - 0.5)
        grain = 1 + rng.uniform(0.1, 0.3) * texture[window]
        inside = 1 / (1 + np.exp(-sdf / 0.6))
        signal[window] += contrast * inside * profile * grain

    debris = np.zeros_like(signal) if with_debris else None
    _add_debris(rng, signal, int(rng.poisson(5 * scale)), debris)
    blur = rng.uniform(0.8, 1.6)
    signal = ndimage.gaussian_filter(signal, blur, mode="nearest")
    if debris is not None:
        debris = ndimage.gaussian_filter(debris, blur, mode="nearest")
    # Shot noise from a photon budget that varies from image to image, then camera read noise.
    photons = rng.uniform(60, 250)
    noisy = rng.poisson(np.clip(signal, 0, None) * photons) / photons
    noisy = noisy + rng.normal(0, rng.uniform(0.01, 0.025), size=noisy.shape)
    image = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    return image, mask, truth, debris


def pair_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index` of seed `seed`, independent of how many images are made."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def write_dataset(
    out: Path,
    n: int,
    seed: int,
    size: int = 128,
    progress: bool = False,
    classes: Sequence[str] | None = None,
    instances: bool = False,
) -> None:
    """Write `out/images/{i:04d}.png` and `out/masks/{i:04d}.png` (0/255) for i < n.

    With `classes` (names from SYNTH_CLASSES, in the order the model lists them) the masks are
    label images instead: 0 background, k where the k-th class is; the images are the same.
    With `instances`, `out/instances/{i:04d}.png` (16-bit) holds one label per nucleus too.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if classes is not None:
        check_classes(classes)
    images, masks = Path(out) / "images", Path(out) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    objects = Path(out) / "instances"
    if instances:
        objects.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc="synth", disable=not progress, file=sys.stderr):
        if classes is None:
            image, mask = generate_pair(pair_rng(seed, i), size)
            written = mask.astype(np.uint8) * 255
        else:
            image, labels = generate_labelled(pair_rng(seed, i), size)
            written = np.zeros_like(labels)
            for value, name in enumerate(classes, start=1):
                written[labels == SYNTH_CLASSES[name]] = value
        Image.fromarray(image).save(images / f"{i:04d}.png")
        Image.fromarray(written).save(masks / f"{i:04d}.png")
        if instances:
            _, _, labels = generate_instances(pair_rng(seed, i), size)
            Image.fromarray(labels).save(objects / f"{i:04d}.png")


def check_classes(classes: Sequence[str]) -> None:
    """Refuse class lists the generator cannot label: unknown names, repeats or none."""
    known = ", ".join(SYNTH_CLASSES)
    if not classes:
        raise ValueError(f"give at least one class; the generator labels {known}")
    for name in classes:
        if name not in SYNTH_CLASSES:
            raise ValueError(f"unknown class {name!r}; the generator labels {known}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {', '.join(classes)} repeat a name; give each once")
