"""sidpipe reads nothing at run time from outside its installed package (besides the user's own paths).

An installed wheel has no source tree: a preset or data file looked up beside `pipeline/` works in an
editable install and fails everywhere else. Here every file opened during `presets`, `info`, an
in-memory run and a tiled run is recorded with an audit hook; a file inside this repository that is
neither in the imported package folders nor the input the test gives is a failure. `.ci/wheel-check`
runs this file again against the built wheel installed in a fresh venv (SIDPIPE_EXPECT_INSTALLED=1),
where the repository is not on the import path at all.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sidpipe
import sidpipe.cli
import sidpipe.configs
from sidpipe.cli import app

from conftest import BALLOONS, ROOT

RECORDING = {"on": False, "paths": []}


def _hook(event: str, args: tuple) -> None:
    if RECORDING["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        RECORDING["paths"].append(os.fsdecode(args[0]))


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records only while RECORDING["on"]


def _package_dirs() -> list[Path]:
    return [Path(m.__file__).resolve().parent for m in (sidpipe, sidpipe.cli, sidpipe.configs)]


def _allowed(tmp: Path) -> list[Path]:
    """The package, the environment's own files (dependencies; a venv may sit inside the clone) and the
    test's folder."""
    return _package_dirs() + [Path(sys.prefix).resolve(), tmp.resolve()]


def _outside_package(paths: list[str], allowed: list[Path]) -> list[str]:
    """The recorded paths inside the repository that are not in `allowed` folders."""
    bad = []
    for p in paths:
        path = Path(p)
        if not path.is_absolute():
            path = Path.cwd() / path
        path = path.resolve()
        metadata = any(part.endswith((".egg-info", ".dist-info")) for part in path.parts)  # the distribution's own
        if path.is_relative_to(ROOT) and not metadata and not any(path.is_relative_to(a) for a in allowed):
            bad.append(str(path))
    return sorted(set(bad))


def test_installed_package_is_the_one_imported():
    """Under the wheel check, sidpipe must come from site-packages, not from the clone."""
    if os.environ.get("SIDPIPE_EXPECT_INSTALLED") != "1":
        pytest.skip("only meaningful against the installed wheel (.ci/wheel-check sets SIDPIPE_EXPECT_INSTALLED=1)")
    for d in _package_dirs():
        assert not d.is_relative_to(ROOT), f"{d} is inside the source tree {ROOT}"


def test_runtime_reads_stay_inside_the_package(tmp_path, monkeypatch):
    ref = tmp_path / "ref.png"
    shutil.copy(BALLOONS, ref)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    quick = ["--steps", "2", "--patch-size", "9", "--set", "num_scales=2", "--quiet"]
    commands = [
        ["presets"],
        ["presets", "--show", "default"],
        ["info", "--json"],
        ["run", str(ref), "--out", str(tmp_path / "small.png"), "--size", "80x60", *quick],
        ["run", str(ref), "--out", str(tmp_path / "tiled.tif"), "--size", "150x100", "--tile-size", "64", *quick],
    ]
    RECORDING["paths"].clear()
    RECORDING["on"] = True
    try:
        for cmd in commands:
            res = runner.invoke(app, cmd)
            assert res.exit_code == 0, (cmd, res.output)
    finally:
        RECORDING["on"] = False
    assert (tmp_path / "small.png").is_file() and (tmp_path / "tiled.tif").is_file()
    # The presets really were read while recording (else the test would pass without looking).
    configs = Path(sidpipe.configs.__file__).resolve().parent
    assert any(Path(p).resolve() == configs / "default.yaml" for p in RECORDING["paths"])
    assert _outside_package(RECORDING["paths"], _allowed(tmp_path)) == []


def test_the_check_catches_a_read_from_the_source_tree(tmp_path):
    """Negative control: a file of the repository outside the package folders is reported."""
    stray = ROOT / "README.md"
    assert _outside_package([str(stray), str(tmp_path / "x")], _allowed(tmp_path)) == [str(stray.resolve())]
