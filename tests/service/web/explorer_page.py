"""What the explorer's browser tests share: images, uploads, reading the page's canvases."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from model.data.synth import generate_pair, pair_rng, write_dataset
from tests.helpers import dataset_files, make_zip, wait_for_calibration
from tests.service.web.browser import API_KEY, Visit, wait_until

MODEL = "unet-sigmoid"
# The mask canvas as 0/1 bytes, base64-encoded, once the pending redraw has happened.
READ_MASK = """async () => {
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const canvas = document.getElementById("mask-canvas");
  const rgba = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const bits = new Uint8Array(rgba.length / 4);
  for (let i = 0; i < bits.length; i += 1) bits[i] = rgba[4 * i + 3] > 0 ? 1 : 0;
  let text = "";
  for (let i = 0; i < bits.length; i += 8192) {
    text += String.fromCharCode(...bits.subarray(i, i + 8192));
  }
  return [canvas.width, canvas.height, btoa(text)];
}"""


def cells_png(folder: Path, size: int, seed: int = 4242) -> Path:
    """A synthetic cell image, as PNG, the kind the shipped models were trained on."""
    image = generate_pair(pair_rng(seed, 0), size)[0]
    path = folder / f"cells-{size}.png"
    Image.fromarray(image).save(path)
    return path


def drawn_mask(visit: Visit) -> np.ndarray:
    """The foreground the page has drawn, as a boolean H x W array."""
    width, height, bits = visit.page.evaluate(READ_MASK)
    return np.frombuffer(base64.b64decode(bits), np.uint8).reshape(height, width).astype(bool)


def upload_image(visit: Visit, path: Path) -> None:
    """Choose `path` in the image input and wait until its mask is drawn."""
    visit.page.set_input_files("#image-input", str(path))
    visit.page.wait_for_selector("#view:not([hidden])", timeout=60_000)
    wait_until(
        visit.page, "document.getElementById('foreground-fraction').textContent.includes('pixels')"
    )


def drop_file(visit: Visit, path: Path) -> None:
    """Drop `path` onto the page's drop zone, as a file dragged from the desktop would be."""
    transfer = visit.page.evaluate_handle(
        """([name, data]) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, { type: "image/png" }));
          return transfer;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )
    visit.page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    visit.page.wait_for_selector("#view:not([hidden])", timeout=60_000)
    wait_until(
        visit.page, "document.getElementById('foreground-fraction').textContent.includes('pixels')"
    )


def set_exact_threshold(visit: Visit, value: float) -> None:
    """Type `value` into the exact-threshold field."""
    visit.page.fill("#threshold-number", repr(value))


def current_threshold(visit: Visit) -> float:
    """The slider's exact threshold, as "Full precision" shows it (the box shows it rounded)."""
    return float(visit.page.text_content("#threshold-exact") or "nan")


def confirm(visit: Visit) -> None:
    """Say yes in the confirmation every change of the live threshold asks for."""
    visit.page.locator("#confirm-dialog").wait_for(state="visible")
    visit.page.click("#confirm-ok")


def server_mask(base: str, path: Path, threshold: float, model: str = MODEL) -> np.ndarray:
    """The service's own mask of `path` at `threshold`."""
    response = httpx.post(
        f"{base}/v1/models/{model}/mask",
        params={"threshold": threshold, "format": "png"},
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))) == 255


def api_threshold(base: str, model: str = MODEL) -> dict[str, Any]:
    """The active threshold as the API answers it."""
    return httpx.get(f"{base}/v1/models/{model}/threshold", timeout=10).json()


def pixel(visit: Visit, canvas: str, x: int, y: int) -> list[int]:
    """The RGBA of one pixel of a canvas."""
    return visit.page.evaluate(
        f"Array.from(document.getElementById({canvas!r}).getContext('2d')"
        f".getImageData({x}, {y}, 1, 1).data)"
    )


def calibration_zip(folder: Path, inverted: bool = False) -> Path:
    """A zip of images/ and masks/; `inverted` swaps foreground and background in the masks."""
    write_dataset(folder / "data", n=4, seed=77, size=64)
    if inverted:
        for mask in (folder / "data" / "masks").iterdir():
            Image.fromarray(255 - np.asarray(Image.open(mask))).save(mask)
    path = folder / "calibration.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted((folder / "data").rglob("*.png")):
            archive.write(file, file.relative_to(folder / "data").as_posix())
    return path


# The mask canvas as class numbers (0 background, k + 1 class k), by the legend's colours.
READ_LABELS = """async () => {
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const keys = [...document.querySelectorAll("#class-legend .key")].map((k) => k.dataset.rgb);
  const canvas = document.getElementById("mask-canvas");
  const rgba = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const labels = new Uint8Array(rgba.length / 4);
  for (let i = 0; i < labels.length; i += 1) {
    if (rgba[4 * i + 3] === 0) continue;
    const rgb = `${rgba[4 * i]},${rgba[4 * i + 1]},${rgba[4 * i + 2]}`;
    labels[i] = keys.indexOf(rgb) + 1; // 0 again for a colour of no class: the test sees it
  }
  let text = "";
  for (let i = 0; i < labels.length; i += 8192) {
    text += String.fromCharCode(...labels.subarray(i, i + 8192));
  }
  return [canvas.width, canvas.height, btoa(text)];
}"""


def drawn_labels(visit: Visit) -> np.ndarray:
    """The class of every pixel the page has drawn (0 background, k + 1 class k), H x W."""
    width, height, bits = visit.page.evaluate(READ_LABELS)
    return np.frombuffer(base64.b64decode(bits), np.uint8).reshape(height, width)


def server_maps(base: str, path: Path, model: str) -> np.ndarray:
    """The service's probability maps of `path` as a NumPy array ((K,) H, W)."""
    response = httpx.post(
        f"{base}/v1/models/{model}/probabilities",
        params={"format": "npy"},
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def server_class_mask(base: str, path: Path, model: str, name: str, threshold: float) -> np.ndarray:
    """The service's mask of class `name` of `path` with `threshold` for every class."""
    response = httpx.post(
        f"{base}/v1/models/{model}/mask",
        params={"threshold": threshold, "format": "png", "class": name},
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))) == 255


def give_key(visit: Visit, key: str) -> None:
    """Type the API key into the dialog a 401 opens."""
    visit.page.locator("#key-dialog").wait_for(state="visible")
    visit.page.fill("#api-key", key)
    visit.page.click("#key-ok")


def calibrate(base: str, n: int, **form: str) -> dict[str, Any]:
    """Run a calibration of MODEL through the API, activated, and return the finished job."""
    zipped = make_zip(dataset_files(n, 64))
    response = httpx.post(
        f"{base}/v1/models/{MODEL}/calibrations",
        files={"dataset": ("calibration.zip", zipped, "application/zip")},
        data={**form, "activate": "true"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    location = f"{base}{response.headers['location']}"
    job = wait_for_calibration(lambda: httpx.get(location, timeout=30).json())
    assert job["status"] == "succeeded", job
    return job
