"""Bring a database to the current schema with Alembic, whatever release wrote it.

A file of the first release has the tables but no `alembic_version`: it is stamped at revision
0001 (its schema) and upgraded from there. Concurrent processes migrate one at a time, inside a
serialised write transaction; whoever comes second finds nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from service.state.database import WRITE

MIGRATIONS = Path(__file__).parent / "migrations"
RELEASE_1 = "0001"


class NewerSchema(RuntimeError):
    """The database was written by a newer release of the service."""


def upgrade(engine: Engine) -> None:
    """Create or upgrade the store's tables in the database behind `engine`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    with engine.execution_options(**{WRITE: True}).begin() as connection:
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" in tables:
            found = {
                row[0]
                for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")
            }
            if found - known:
                raise NewerSchema(
                    f"the database was written by a newer version of the service (schema "
                    f"{', '.join(sorted(found - known))}); upgrade the service"
                )
        elif "calibrations" in tables:
            command.stamp(config, RELEASE_1)
        command.upgrade(config, "head")
