"""The `unet` command line: synth, train, evaluate, calibrate, make-weights, serve.

Every command but `serve` is the model's own (model/cli.py); this module adds the service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model.cli import add_command, add_commands, run

DESCRIPTION = "The `unet` command line: synth, train, evaluate, calibrate, make-weights, serve."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unet` console script."""
    return run(_parser(), argv)


def _serve(args: argparse.Namespace) -> int:
    from service.__main__ import run as serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet", description=DESCRIPTION)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_commands(commands)
    serve = add_command(commands, "serve", _serve, "run the HTTP service", json_option=False)
    serve.add_argument("--host", help="default: UNET_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: UNET_PORT or 8000")
    serve.add_argument(
        "--workers", type=int, help="processes on one port; default: UNET_WORKERS or 1"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
