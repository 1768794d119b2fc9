"""The `unet` command line: synth, train, evaluate, calibrate, make-weights, serve, state.

Every command but `serve` and `state` is the model's own (model/cli.py); this module adds the
service's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from model.cli import EXIT_USAGE, add_command, add_commands, emit, run

DESCRIPTION = (
    "The `unet` command line: synth, train, evaluate, calibrate, make-weights, serve, state."
)
EXIT_UNSOUND = 1  # `state check`: the database is not sound; the line on stderr says why


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unet` console script."""
    return run(_parser(), argv)


def _serve(args: argparse.Namespace) -> int:
    from service.__main__ import run as serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def _location(args: argparse.Namespace) -> Path | str:
    """`--file`, else the database the service would open (UNET_DATABASE_URL, UNET_STATE_DIR)."""
    from service.settings import Settings
    from service.state.integrity import store_location

    return args.file if args.file is not None else store_location(Settings())


def _state_check(args: argparse.Namespace) -> int:
    from service.state.integrity import check_file, check_url, describe, unsound

    location = _location(args)
    if isinstance(location, Path):
        if not location.exists():
            raise FileNotFoundError(
                f"no state database at {location}; set UNET_STATE_DIR or --file"
            )
        finding = check_file(location, thorough=True)
    else:
        finding = check_url(location)
    result = {
        "database": describe(location),
        "backend": "sqlite" if isinstance(location, Path) else "postgresql",
        "sound": finding.problem is None,
        "revision": finding.revision,
        "problem": None if finding.problem is None else str(unsound(location, finding)),
    }
    emit(args, result)
    if finding.problem is not None:
        print(f"{args.prog}: {result['problem']}", file=sys.stderr)
        return EXIT_UNSOUND
    return 0


def _state_backup(args: argparse.Namespace) -> int:
    from service.state.backup import backup
    from service.state.integrity import describe

    location = _location(args)
    if not isinstance(location, Path):
        print(
            f"{args.prog}: the state lives in PostgreSQL ({describe(location)}); back it up with "
            "pg_dump, e.g. pg_dump --format=custom --file=unet-state.dump DATABASE_URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    emit(args, backup(location, args.out))
    return 0


def _add_state(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = commands.add_parser(
        "state",
        help="check or back up the threshold store",
        description="check or back up "
        "the threshold store (UNET_STATE_DIR's thresholds.sqlite3, or UNET_DATABASE_URL)",
    )
    actions = state.add_subparsers(required=True, metavar="ACTION")
    check = add_command(
        actions,
        "check",
        _state_check,
        "SQLite: integrity_check of every page and index; both: the schema revision and tables "
        f"(exit {EXIT_UNSOUND} and one line on stderr when unsound)",
    )
    out = add_command(
        actions,
        "backup",
        _state_backup,
        "SQLite: copy the live database with the online backup API, checked before it is kept "
        "(PostgreSQL: use pg_dump)",
    )
    out.add_argument("out", type=Path, help="the backup file to create, or a folder to put it in")
    for sub, action in ((check, "check"), (out, "backup")):
        sub.add_argument("--file", type=Path, help="a SQLite file (default: the service's store)")
        sub.set_defaults(name=f"state {action}", prog=f"unet state {action}")


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
    _add_state(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
