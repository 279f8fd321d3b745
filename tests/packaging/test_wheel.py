"""The built wheel ships the integration alone: `prefect_opencomputer` (with its logo), no bench or tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import prefect_opencomputer

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make install puts it in .venv)")
    return uv


def test_the_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [_uv(), "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {name.split("/", 1)[0] for name in names}
    version = prefect_opencomputer.__version__
    assert top_level == {"prefect_opencomputer", f"prefect_opencomputer-{version}.dist-info"}
    assert "prefect_opencomputer/assets/logo.png" in names
    assert f"-{version}-" in wheel.name
