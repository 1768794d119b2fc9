"""`unet instances IMAGE... --model CARD`: objects of many images offline, one file each.

Kept out of model/cli.py (which holds the other commands) so that file stays one screenful of
options; like them, the handler imports its work when it runs, keeping `unet --help` cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = ("geojson", "csv", "labels")
TILE_PIXELS = 1024 * 1024  # the service's default: larger images run in tiles, memory bounded


def add_instances(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the `instances` command to `commands` (built with model/cli.py's `add_command`)."""
    from model.inference.instances import CONNECTIVITIES, DEFAULT_SPLIT, SPLITS

    sub = add_command(
        commands,
        "instances",
        _instances,
        "label the objects in images and write them as GeoJSON (QuPath), CSV or label images",
    )
    sub.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    sub.add_argument("--model", type=Path, required=True, help="model card (.json) or checkpoint")
    sub.add_argument("--format", choices=FORMATS, default="geojson")
    sub.add_argument("--out", type=Path, default=Path("."), help="folder to write to (default .)")
    sub.add_argument("--threshold", type=float, help="default: the model's own")
    sub.add_argument("--split", choices=SPLITS, default=DEFAULT_SPLIT)
    sub.add_argument("--min-area", type=int, default=0, help="drop smaller objects (pixels)")
    sub.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=1)


def _instances(args: argparse.Namespace) -> int:
    import json

    from model.cards.sources import load_predictor
    from model.data.decoding import image_from_bytes
    from model.inference.instance_formats import csv_table, feature_collection, labels_file
    from model.inference.instances import InstanceOptions, label_scores, object_table
    from model.inference.predict import predict
    from model.inference.tiling import predict_tiled

    options = InstanceOptions(args.split, args.min_area, args.connectivity)
    predictor = load_predictor(args.model)
    card = predictor.card
    threshold = args.threshold if args.threshold is not None else card.threshold
    if threshold is None:
        raise ValueError(f"{args.model} has no threshold of its own; give --threshold")
    class_name = (card.output.class_names or ("foreground",))[0]
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in args.images:
        pixels = image_from_bytes(path.read_bytes(), card.input, path.name)
        large = pixels.shape[1] * pixels.shape[2] > TILE_PIXELS
        scores = (predict_tiled if large else predict)(predictor, pixels).output
        labels = label_scores(scores, threshold, options)
        rows = object_table(labels, scores)
        if args.format == "labels":
            data, media_type = labels_file(labels)
            target = (
                args.out / f"{path.stem}.labels.{'png' if media_type == 'image/png' else 'tif'}"
            )
        elif args.format == "csv":
            data, target = csv_table(rows).encode(), args.out / f"{path.stem}.csv"
        else:
            properties = {"model": str(args.model), "threshold": threshold, "image": path.name}
            collection = feature_collection(labels, rows, properties, class_name)
            data, target = json.dumps(collection).encode(), args.out / f"{path.stem}.geojson"
        target.write_bytes(data)
        written.append({"image": str(path), "file": str(target), "count": len(rows)})
    from model.cli import emit

    emit(args, {"threshold": threshold, "split": args.split, "files": written})
    if not args.json:
        for entry in written:
            print(f"{entry['image']}: {entry['count']} objects -> {entry['file']}")
    return 0
