"""Every Python block of the README runs, as a program, against the local server and the Prefect API."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(
    index: int, control: Any, sync_live_sandboxes: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / f"readme_example_{index}.py"
    program.write_text(BLOCKS[index])

    runpy.run_path(str(program), run_name="__main__")

    printed = capsys.readouterr().out
    assert printed.strip(), "each example prints what it did"
    assert sync_live_sandboxes() == 0


def test_the_headline_example_does_real_work_with_pip_on_the_default_template() -> None:
    headline = BLOCKS[0]
    assert "open_sandbox()" in headline and "pip install" in headline and "pytest" in headline
