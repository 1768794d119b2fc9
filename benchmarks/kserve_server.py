"""KServe's own Python model server (`kserve.ModelServer`) serving a shipped U-Net over v2.

    python -m benchmarks.kserve_server --checkpoint model/weights/unet-sigmoid.safetensors \
        --port 8080 [--threads 2]

The model is written as KServe's documentation writes one: a `kserve.Model` whose `predict`
takes an `InferRequest` and returns an `InferResponse`. It runs the same network as the service,
exported by the project's own ONNX export, on ONNX Runtime with the service's session options,
and does what the service does around the pass: the card's normalisation (`image_from_array`),
the padding to the network's grid and the crop back, the card's head and threshold. It answers
`mask` (UINT8 [N, 1, H, W]) and `probabilities` (FP32), binary when the request asks. Its REST
server listens on 127.0.0.1 only (KServe binds 0.0.0.0 itself; `main` narrows it) and its gRPC
server is off. Needs the optional extra `.[kserve]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.cards.export import export
from model.cards.sources import load_predictor
from model.cards.sources.native import NativePredictor
from model.cards.sources.onnx import ort_session
from model.cards.to_onnx import INPUT_NAME, OUTPUT_NAME
from model.data.decoding import image_from_array

HOST = "127.0.0.1"


def model_class() -> type[Any]:
    """The KServe model class (built here: kserve is imported only when this server runs)."""
    import kserve
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class UNetModel(kserve.Model):  # type: ignore[misc]
        """A shipped U-Net on ONNX Runtime, as a KServe v2 model."""

        def __init__(self, name: str, checkpoint: Path, folder: Path, threads: int) -> None:
            super().__init__(name)
            self.checkpoint, self.folder, self.threads = checkpoint, folder, threads

        def load(self) -> bool:
            """Export the network to ONNX and open a session of it."""
            predictor = load_predictor(self.checkpoint)
            assert isinstance(predictor, NativePredictor)
            self.predictor = predictor
            card = export(self.checkpoint, "onnx", self.folder / f"{self.name}.onnx")
            self.session = ort_session(card.with_suffix(".onnx"), self.threads)
            threshold = predictor.card.threshold
            self.threshold = 0.5 if threshold is None else float(threshold)
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: Any = None) -> InferResponse:
            """Masks and probabilities of the UINT8 pixels in input `image` ([N, H, W])."""
            pixels = payload.inputs[0].as_numpy()
            batch = np.stack(
                [image_from_array(image, self.predictor.input, "image") for image in pixels]
            )
            height, width = batch.shape[-2:]
            network = self.predictor.network
            padded, (top, left) = network.pad_to_grid(torch.from_numpy(batch))
            (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: padded.numpy()})
            cropped = torch.from_numpy(logits)[..., top : top + height, left : left + width]
            with torch.inference_mode():
                scores = self.predictor.foreground(cropped)[0].numpy()[:, None]
            planes = {
                "probabilities": np.ascontiguousarray(scores, dtype=np.float32),
                "mask": (scores >= self.threshold).astype(np.uint8),
            }
            outputs = []
            for name, plane in planes.items():
                datatype = "FP32" if plane.dtype == np.float32 else "UINT8"
                output = InferOutput(name, list(plane.shape), datatype)
                output.set_data_from_numpy(plane, binary_data=True)
                outputs.append(output)
            return InferResponse(
                payload.id,
                self.name,
                outputs,
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )

    return UNetModel


def main() -> None:
    """Serve the checkpoint's model on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args, _ = parser.parse_known_args()
    import kserve
    from kserve.protocol.rest import server as rest

    narrowed = rest.RESTServer.__init__

    def on_loopback(self: Any, *options: Any, **named: Any) -> None:
        narrowed(self, *options, **named)
        self.config.host = HOST  # KServe hard-codes 0.0.0.0; benchmarks listen on loopback only

    rest.RESTServer.__init__ = on_loopback  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as folder:
        model = model_class()(args.checkpoint.stem, args.checkpoint, Path(folder), args.threads)
        model.load()
        server = kserve.ModelServer(
            http_port=args.port, enable_grpc=False, workers=1, enable_latency_logging=False
        )
        # Quiet, as the service runs in the benchmark (UNET_LOG_LEVEL=WARNING): a log line per
        # request would cost KServe time the service does not spend.
        for name in ("kserve", "kserve.trace", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
        server.start([model])


if __name__ == "__main__":
    main()
