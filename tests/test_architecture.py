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


def test_the_walk_sees_what_it_must() -> None:
    # Without these, an empty or broken walk would pass every check below.
    assert ROOT / "service" / "inference" / "engine.py" in below_the_edge()
    assert ROOT / "service" / "api" / "errors.py" not in below_the_edge()
    assert "fastapi" in imported(ROOT / "service" / "api" / "errors.py")
    assert "service.api.problems" in imported(ROOT / "service" / "app.py")
    assert reaches("service.api.problems", HTTP) and not reaches("service.apiary", HTTP)


@pytest.mark.parametrize("path", below_the_edge(), ids=lambda p: str(p.relative_to(ROOT)))
def test_service_below_the_edge_does_not_speak_http(path: Path) -> None:
    found = sorted(name for name in imported(path) if reaches(name, HTTP))
    assert not found, f"{path.relative_to(ROOT)} imports {found}; only service/api may"


@pytest.mark.parametrize("path", modules("model"), ids=lambda p: str(p.relative_to(ROOT)))
def test_model_never_imports_service(path: Path) -> None:
    found = sorted(name for name in imported(path) if reaches(name, ("service",)))
    assert not found, f"{path.relative_to(ROOT)} imports {found}; model must stand alone"
