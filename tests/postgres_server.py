"""A throw-away PostgreSQL server for tests, on a Unix socket only (no TCP port at all).

A Unix socket is a file, so clients reach it from any network namespace, and nothing it does
can leave the machine. Debian's server refuses to run as root: it runs as a system user.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "unet-pg"


def available() -> str | None:
    """Why no server can be started here, or None when one can."""
    if not (BIN / "pg_ctl").is_file():
        return f"PostgreSQL 15 is not installed ({BIN})"
    if shutil.which("runuser") is None or shutil.which("useradd") is None:
        return "runuser/useradd are missing"
    return None


def _as_user(*command: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", *command], check=True, capture_output=True)


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A running server with an empty database `unet`; yields its `postgresql://` URL."""
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, USER)
    folder.chmod(0o755)
    for parent in folder.parents:  # the server user must reach its folder
        if parent.stat().st_mode & 0o001 == 0:
            parent.chmod(parent.stat().st_mode | 0o001)
    data, socket = folder / "data", folder
    _as_user(str(BIN / "initdb"), "-D", str(data), "-U", "unet", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses='' -k {socket}"
    _as_user(
        str(BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-w",
        "start",
        "-l",
        str(folder / "server.log"),
    )
    try:
        _as_user(str(BIN / "createdb"), "-h", str(socket), "-U", "unet", "unet")
        yield f"postgresql://unet@/unet?host={socket}"
    finally:
        _as_user(str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
