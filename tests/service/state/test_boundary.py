"""The state layer is the service's only door to SQLAlchemy."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVICE, STATE = ROOT / "service", ROOT / "service" / "state"


def imports_sqlalchemy(path: Path) -> bool:
    """Whether `path` imports sqlalchemy (or a module of it), anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name == "sqlalchemy" or name.startswith("sqlalchemy.") for name in names):
            return True
    return False


def test_only_the_state_layer_imports_sqlalchemy() -> None:
    outside = [p for p in SERVICE.rglob("*.py") if STATE not in p.parents]
    assert len(outside) > 20 and SERVICE / "calibration" / "jobs.py" in outside
    assert imports_sqlalchemy(STATE / "jobs.py")  # the check sees an import where there is one
    offenders = [str(p.relative_to(ROOT)) for p in outside if imports_sqlalchemy(p)]
    assert offenders == [], f"{offenders} import sqlalchemy; only service/state/ may"
