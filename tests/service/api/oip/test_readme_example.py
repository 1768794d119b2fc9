"""The README's "same mask three ways" example, run as written against a running service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.data.synth import generate_pair, pair_rng
from tests.helpers import png
from tests.servers import running_service

README = Path(__file__).parents[4] / "README.md"
SECTION = "### The same mask three ways"


def blocks() -> tuple[str, str]:
    """The section's python and bash blocks."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ")]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    bash = re.search(r"```bash\n(.*?)```", section, re.S)
    assert python and bash, "the README example lost a block"
    return python.group(1), bash.group(1)


@pytest.mark.slow
def test_the_readme_example_gives_one_mask_three_ways(
    shipped_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    python, bash = blocks()
    (tmp_path / "cells.png").write_bytes(png(generate_pair(pair_rng(77, 0), 96)[0]))
    monkeypatch.chdir(tmp_path)
    with running_service(shipped_weights, tmp_path / "state") as service:
        address = f"127.0.0.1:{service.port}"
        exec(compile(python.replace("127.0.0.1:8000", address), "README", "exec"), {})
        said = capsys.readouterr().out
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        curl = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", bash.replace("127.0.0.1:8000", address)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PATH": path},
            check=True,
        )
    (count,) = re.findall(r"^(\d+) foreground pixels$", said, re.M)
    assert curl.stdout.strip() == f"{count} foreground pixels"
    assert 0 < int(count) < 96 * 96  # a mask with something in it, not an empty or full one
