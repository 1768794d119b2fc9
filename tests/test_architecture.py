"""The layering the design asks for: only the HTTP edge speaks HTTP, and `model` stands alone.

Read from the source (every import statement, also those inside functions), so a violation is
found whatever the code path that would have imported it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTTP = ("fastapi", "starlette", "service.api")
# The HTTP edge: the routes, problems, middleware and server, and the entry points that
# assemble them.
EDGE = (
    ROOT / "service" / "api",
    ROOT / "service" / "app.py",
    ROOT / "service" / "__main__.py",
    ROOT / "service" / "ray_app.py",  # the Ray Serve entry point: the same app, on Ray
)


SQL = ("sqlalchemy", "alembic")
STATE = ROOT / "service" / "state"
MAX_LINES = 450
MAX_MODEL_TOP_LEVEL = 8
PROBLEM_KEYS = {"type", "title", "status"}


def module_name(path: Path) -> str:
    """`service/inference/engine.py` -> `service.inference.engine` (a package: its __init__)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from service import api` imports service.api
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reaches(name: str, banned: tuple[str, ...]) -> bool:
    """Whether importing `name` is importing one of `banned` (a package or a module in it)."""
    return any(name == ban or name.startswith(ban + ".") for ban in banned)


def modules(package: str) -> list[Path]:
    """Every Python file of `package`."""
    return sorted((ROOT / package).rglob("*.py"))


def below_the_edge() -> list[Path]:
    """The service's modules outside the HTTP edge."""
    return [p for p in modules("service") if not any(p == e or e in p.parents for e in EDGE)]


def at_the_edge(path: Path) -> bool:
    """Whether `path` is part of the HTTP edge."""
    return any(path == e or e in path.parents for e in EDGE)


def below_the_state() -> list[Path]:
    """The service's modules outside `service/state/`."""
    return [p for p in modules("service") if STATE not in p.parents]


def problem_literals(path: Path) -> list[int]:
    """Lines where `path` writes a problem document by hand: a dict with type, title, status."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and {k.value for k in node.keys if isinstance(k, ast.Constant)} >= PROBLEM_KEYS
    ]


def is_test_module(name: str) -> bool:
    """Whether dotted `name` is (or is inside) a `test_*` module."""
    return any(part.startswith("test_") for part in name.split("."))


def test_the_walk_sees_what_it_must() -> None:
    # Without these, an empty or broken walk would pass every check below.
    assert ROOT / "service" / "inference" / "engine.py" in below_the_edge()
    assert ROOT / "service" / "api" / "errors.py" not in below_the_edge()
    assert "fastapi" in imported(ROOT / "service" / "api" / "errors.py")
    assert "service.api.problems" in imported(ROOT / "service" / "app.py")
    assert reaches("service.api.problems", HTTP) and not reaches("service.apiary", HTTP)
    assert any(reaches(n, SQL) for n in imported(STATE / "database.py"))
    assert problem_literals(ROOT / "service" / "api" / "problems.py")
    assert is_test_module("tests.service.api.test_api") and not is_test_module("tests.helpers")


@pytest.mark.parametrize("path", below_the_edge(), ids=lambda p: str(p.relative_to(ROOT)))
def test_service_below_the_edge_does_not_speak_http(path: Path) -> None:
    found = sorted(name for name in imported(path) if reaches(name, HTTP))
    assert not found, f"{path.relative_to(ROOT)} imports {found}; only service/api may"


@pytest.mark.parametrize("path", modules("model"), ids=lambda p: str(p.relative_to(ROOT)))
def test_model_never_imports_service(path: Path) -> None:
    found = sorted(name for name in imported(path) if reaches(name, ("service",)))
    assert not found, f"{path.relative_to(ROOT)} imports {found}; model must stand alone"


@pytest.mark.parametrize("path", below_the_state(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_state_layer_speaks_sql(path: Path) -> None:
    found = sorted(name for name in imported(path) if reaches(name, SQL))
    assert not found, f"{path.relative_to(ROOT)} imports {found}; only service/state may"


@pytest.mark.parametrize(
    "path",
    [p for p in modules("service") if not at_the_edge(p)] + modules("model"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_http_edge_builds_problem_json(path: Path) -> None:
    found = problem_literals(path)
    assert not found, f"{path.relative_to(ROOT)} builds problem JSON at lines {found}"


@pytest.mark.parametrize(
    "path", modules("model") + modules("service"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_are_short_enough_to_read_whole(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by concept"


def test_model_is_grouped_by_role() -> None:
    top = [
        p.name
        for p in (ROOT / "model").iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()
    ]
    assert "network" in top and "errors.py" in top  # the walk sees the layout
    assert len(top) <= MAX_MODEL_TOP_LEVEL, (
        f"model/ has {len(top)} top-level modules: {sorted(top)}"
    )


@pytest.mark.parametrize("path", modules("tests"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_test_module_imports_another(path: Path) -> None:
    found = sorted(
        name for name in imported(path) if name.startswith("tests.") and is_test_module(name)
    )
    assert not found, f"{path.relative_to(ROOT)} imports {found}; share through a helper module"
