"""`sidpipe run` end to end on a real photo, and every bad input gives one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sidpipe import __version__
from sidpipe.cli import app
from sidpipe.io.read import load_image

from conftest import BALLOONS

runner = CliRunner()
QUICK = ["--steps", "2", "--patch-size", "9", "--set", "num_scales=2", "--set", "precision=fp32", "--quiet"]


def small_png(tmp_path: Path, size=(80, 60)) -> Path:
    from PIL import Image

    path = tmp_path / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize(size).save(path)
    return path


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_run_end_to_end_png_and_samples(tmp_path):
    ref = small_png(tmp_path)
    out = tmp_path / "out.png"
    res = runner.invoke(app, ["run", str(ref), "--out", str(out), "--seed", "3", "--size", "70x50", *QUICK])
    assert res.exit_code == 0, res.output
    img = load_image(out)
    assert img.shape == (3, 50, 70)
    res = runner.invoke(app, ["run", str(ref), "--out", str(tmp_path / "many.tif"), "--samples", "2", *QUICK])
    assert res.exit_code == 0, res.output
    a, b = load_image(tmp_path / "many_000.tif"), load_image(tmp_path / "many_001.tif")
    assert a.shape == (3, 60, 80) and np.abs(a - b).mean() > 0.01
    assert not (tmp_path / "many.tif").exists()


def test_console_script_on_real_photo(tmp_path):
    """The installed entry point on the bundled example, as a user runs it."""
    out = tmp_path / "balloons_out.png"
    cmd = [sys.executable, "-m", "sidpipe.cli", "run", str(BALLOONS), "--out", str(out), "--size", "124x93", *QUICK]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert load_image(out).shape == (3, 93, 124)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["missing.png"], "not found"),
        (["notimage.png"], "not an image"),
        (["tiny.png"], "at least"),
        (["ref.png", "--size", "0x10"], "--size"),
        (["ref.png", "--size", "banana"], "--size"),
        (["ref.png", "--set", "no_such_key=1"], "unknown config key"),
        (["ref.png", "--set", "steps=many"], "expected int"),
        (["ref.png", "--preset", "nope"], "unknown preset"),
        (["ref.png", "--eta", "2"], "eta"),
        (["ref.png", "--index", "annoy"], "index must be"),
        (["ref.png", "--set", "index_scales=ivf,bogus"], "index_scales"),
        (["ref.png", "--set", "index_scales=ivf,ivf,ivf,ivf,ivf,ivf"], "index_scales lists"),
        (["ref.png", "--index", "ivf", "--set", "pq=7"], "must divide"),
        (["ref.png", "--out-ext", ".bmp"], "unsupported output"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, args, needle):
    small_png(tmp_path)
    (tmp_path / "notimage.png").write_text("hello")
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    out = tmp_path / "out.png"
    if args[-2:-1] == ["--out-ext"]:
        out, args = tmp_path / "out.bmp", args[:-2]
    argv = ["run", str(tmp_path / args[0]), "--out", str(out), *args[1:], "--quiet"]
    res = runner.invoke(app, argv)
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert needle in res.output, res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_presets_and_info():
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0 and "default" in res.output and "paper-table1" in res.output
    res = runner.invoke(app, ["presets", "--show", "paper-table1"])
    assert res.exit_code == 0 and "precision: fp32" in res.output and "query_stride: 1" in res.output
    res = runner.invoke(app, ["presets", "--show", "paper-table1", "--all"])
    assert res.exit_code == 0 and "knn: 5" in res.output  # a default the preset does not set
    res = runner.invoke(app, ["presets", "--show", "no-such-preset"])
    assert res.exit_code == 1 and "unknown preset" in res.output
    import json

    from sidpipe.devices import resolve_precision

    res = runner.invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["versions"]["sidpipe"] == __version__
    assert info["compute"]["precision_auto"] == resolve_precision("auto", __import__("torch").device(info["compute"]["device"]))
    assert info["memory"]["total"] > 0 and info["disk"][0]["free"] > 0
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "precision:     auto ->" in res.output


@pytest.mark.parametrize("stopped", [True, False])
def test_sigterm_wrapped_by_a_library_still_ends_cleanly(tmp_path, monkeypatch, stopped):
    """SIGTERM raises in the main thread wherever it is; a library may turn that into another exception.
    With the handler's flag set the CLI still says SIGTERM in one line; without it the bug surfaces."""
    import sidpipe.runner
    from sidpipe.tiles import STOP

    def wrapped(*args, **kwargs):
        if stopped:
            STOP.set()
        raise RuntimeError("a library's own error")

    monkeypatch.setattr(sidpipe.runner, "run", wrapped)
    try:
        res = runner.invoke(app, ["run", str(BALLOONS), "--out", str(tmp_path / "o.png")])
    finally:
        STOP.clear()
    if stopped:
        assert res.exit_code == 1 and "stopped by SIGTERM" in res.output and res.exception.__class__ is SystemExit
    else:
        assert isinstance(res.exception, RuntimeError)  # a real bug is not disguised as an interruption
