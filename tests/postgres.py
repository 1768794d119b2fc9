"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary folder, loopback.

PostgreSQL refuses to run as root, so as root the server runs as a system user (`pgtest`,
created if missing). Trust authentication on 127.0.0.1 only: nothing else can reach it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

USER = "pgtest"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
    return ["runuser", "-u", USER, "--", *command]


class Control:
    """Stops and starts a running test server, as an outage would: its URL stays the same."""

    def __init__(self, run: Callable[..., None], data: Path, options: str, log: Path) -> None:
        self._run, self._data, self._options, self._log = run, data, options, log

    def stop(self) -> None:
        """Stop at once (`immediate`: connections drop, as when the server is killed)."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "stop")

    def start(self) -> None:
        """Start again on the same port and data, and wait until it takes connections."""
        self._run(
            "pg_ctl",
            "-D",
            str(self._data),
            "-o",
            self._options,
            "-l",
            str(self._log),
            "-w",
            "start",
        )


@contextmanager
def server(socket_only: bool = False) -> Iterator[str]:
    """Run a PostgreSQL server in a temporary folder; yields the URL of its `postgres` database.

    `socket_only`: no TCP port at all, only a Unix socket in that folder, which clients reach
    from any network namespace (the Ray test's loopback-only one included).
    """
    with controlled_server(socket_only) as (url, _):
        yield url


@contextmanager
def controlled_server(socket_only: bool = False) -> Iterator[tuple[str, Control]]:
    """`server`, with a Control that stops and restarts it."""
    bin_dir = binaries()
    assert bin_dir is not None
    # Not under pytest's folder: its parents are private to root, and the server user must
    # reach its own data.
    folder = Path(tempfile.mkdtemp(prefix="unet-postgres-"))
    if os.geteuid() == 0:
        _as_server_user(["true"])  # creates the user if missing
        shutil.chown(folder, USER, USER)
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        command = _as_server_user([str(bin_dir / args[0]), *args[1:]])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    listen = "-c listen_addresses=''" if socket_only else f"-h 127.0.0.1 -p {port}"
    options = f"{listen} -k {folder} -c fsync=off -c max_connections=200"
    control = Control(run, data, options, folder / "log")
    control.start()
    try:
        if socket_only:
            yield f"postgresql://postgres@/postgres?host={folder}", control
        else:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres", control
    finally:
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )  # already stopped is fine
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A fresh, empty database on the server at `server_url`; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
