"""Image-to-image (`sidpipe i2i`): the content's low frequencies, the style's patches; tiled == in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sidpipe.apps import i2i
from sidpipe.cli import app
from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.metrics import nn_patch_distance
from sidpipe.plan import make_plan
from sidpipe.runner import generate

from conftest import BALLOONS, DATA, lowpass_corr, tiled_result

runner = CliRunner()
SIZE = (96, 72)  # W, H of both images: 4 scales of p = 7


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("i2i")
    style, content = folder / "style.png", folder / "content.png"
    Image.open(DATA / "starry_night.png").convert("RGB").resize(SIZE, Image.LANCZOS).save(style)
    Image.open(BALLOONS).convert("RGB").resize(SIZE, Image.LANCZOS).save(content)
    return style, content


def cfg():
    return load_config("i2i", {"seed": 1, "width": SIZE[0], "height": SIZE[1], "patch_size": 7})


def sample(pair, mode: str) -> np.ndarray:
    style, content = pair
    c = cfg()
    ref = load_image(style)
    plan = make_plan(c, ref.shape[-2:])
    return generate(ref, c, plan=plan, hooks=i2i.make(content, style, 3, c.steps, mode=mode)(plan))[0]


@pytest.mark.parametrize("mode", ["sdedit", "ilvr"])
def test_i2i_keeps_the_content_in_the_style(pair, mode):
    style, content = (load_image(p) for p in pair)
    out = sample(pair, mode)
    corr, nn, nn_content = lowpass_corr(out, content), nn_patch_distance(out, style), nn_patch_distance(content, style)
    print(f"{mode}: low-pass corr {corr:.3f}; NN->style {nn:.4f} (content's own {nn_content:.4f})")
    assert corr >= 0.9 and nn < 0.7 * nn_content


def test_i2i_ilvr_tiled_equals_in_memory(pair, tmp_path):
    style, content = pair
    c = cfg()
    tiled = tiled_result(style, c, i2i.make(content, style, 3, c.steps, mode="ilvr"), tmp_path)
    np.testing.assert_array_equal(tiled, sample(pair, "ilvr"))


def test_histogram_matching_is_exact_quantile_mapping():
    rng = np.random.default_rng(0)
    content, style = rng.normal(size=(3, 20, 30)), rng.uniform(-1, 1, size=(3, 25, 25))
    matched = i2i.match_histogram(content, style)
    for c in range(3):
        assert np.array_equal(np.argsort(matched[c].ravel(), kind="stable"), np.argsort(content[c].ravel(), kind="stable"))
        assert abs(np.median(matched[c]) - np.median(style[c])) < 0.02 and matched[c].min() >= style[c].min()


@pytest.mark.parametrize("args, needle", [
    (["--mode", "blend"], "--mode must be one of sdedit, ilvr"),
    (["--noise-level", "0"], "noise level must be in (0, 1]"),
    (["--at-scale", "9"], "--at-scale must be in 0.."),
    (["--mode", "ilvr", "--at-scale", "1"], "--at-scale is for --mode sdedit"),
])
def test_bad_input_is_one_line_and_writes_nothing(pair, tmp_path, args, needle):
    style, content = pair
    res = runner.invoke(app, ["i2i", str(style), str(content), "--out", str(tmp_path / "o.png"), *args])
    assert res.exit_code == 1 and needle in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o.png").exists()
    missing = runner.invoke(app, ["i2i", str(style), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o.png")])
    assert missing.exit_code == 1 and "content image not found" in missing.output
