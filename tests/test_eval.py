"""Quality measurement end to end: metric ordering on real images and a real sidpipe sample,
`sidpipe eval` (table, JSON, contact sheet, clean failures), `sidpipe bench quality`, optional SIFID."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sidpipe import metrics as M
from sidpipe.cli import app
from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.io.write import save_image
from sidpipe.pyramid import resize
from sidpipe.quality import EvalSettings, contact_sheet, evaluate_images

from conftest import BALLOONS, DATA

runner = CliRunner()
W, H = 64, 48  # 1700 patches of 15x15: the exact denoiser at every scale, a few seconds per sample


def _small(path: Path, w: int = W, h: int = H) -> np.ndarray:
    return resize(torch.from_numpy(load_image(path)), (h, w)).numpy()


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return _small(BALLOONS)


@pytest.fixture(scope="module")
def sample(ref) -> np.ndarray:
    """A real sidpipe sample of the small reference (default preset, seed 0, the reference's size)."""
    from sidpipe.runner import generate

    return generate(ref, load_config("default", {"seed": 0, "samples": 1, "width": W, "height": H}))[0]


@pytest.fixture(scope="module")
def cases(ref, sample) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "reference": ref,
        "crop": np.ascontiguousarray(ref[:, 6:42, 8:56]),
        "shift": np.ascontiguousarray(np.roll(ref, (H // 3, W // 3), axis=(1, 2))),
        "sample": sample,
        "noise": np.clip(rng.normal(size=ref.shape), -1, 1).astype(np.float32),
        "other photo": _small(DATA / "starry_night.png"),
    }


@pytest.fixture(scope="module")
def scores(ref, cases) -> dict[str, dict]:
    settings = EvalSettings(query_stride=2)
    return {name: evaluate_images(ref, [img], settings)["rows"][0] for name, img in cases.items()}


# --------------------------------------------------------------------------- ordering


def test_reference_itself_is_identical(scores):
    s = scores["reference"]
    assert s["swd"] < 1e-3
    assert s["nn_l0"] < 1e-4 and s["nn_l1"] < 1e-4 and s["nn_l2"] < 1e-4 and s["coverage"] < 1e-4
    assert s["copy_rate"] > 0.95


def test_shifted_and_cropped_reference_are_copies(scores):
    assert scores["crop"]["copy_rate"] > 0.9
    assert scores["crop"]["nn_l0"] < 1e-4  # every patch of a crop is in the reference
    assert scores["shift"]["copy_rate"] > 0.6  # four translated quadrants (seams are not copies)
    for name in ("crop", "shift"):
        assert scores[name]["copy_rate"] > scores["sample"]["copy_rate"]


def test_sample_lies_between_copies_and_unrelated_images(scores):
    smp = scores["sample"]
    far = [scores["noise"], scores["other photo"]]
    # Closer to the reference than noise or another photo in every distance ...
    for key in ("swd", "nn_l0", "nn_l1", "nn_l2", "coverage"):
        assert scores["reference"][key] < smp[key] < 0.6 * min(f[key] for f in far), key
    # ... but not a copy of it: part of it is re-synthesised, unrelated images copy nothing.
    assert 0.05 < smp["copy_rate"] < 0.9
    for f in far:
        assert f["copy_rate"] < 0.02


def test_metrics_are_deterministic_for_a_seed(ref, sample, cases):
    pair = [sample, cases["shift"]]
    a = evaluate_images(ref, pair, EvalSettings(seed=3))
    b = evaluate_images(ref, pair, EvalSettings(seed=3))
    assert a == b
    assert a["pixel_diversity"] > 0
    other = M.patch_swd(sample, ref, seed=4)
    assert a["rows"][0]["swd"] == M.patch_swd(sample, ref, seed=3) != other  # other projections


def test_nn_levels_match_downsampled_images(ref, sample):
    levels = M.nn_patch_distance_levels(sample, ref, levels=3)
    assert len(levels) == 3
    assert levels[0] == M.nn_patch_distance(sample, ref)
    pool = lambda x: torch.nn.functional.avg_pool2d(torch.from_numpy(x)[None], 2)[0].numpy()  # noqa: E731
    assert levels[1] == pytest.approx(M.nn_patch_distance(pool(sample), pool(ref)), rel=1e-6)
    # A level whose images are smaller than the patch is left out.
    assert len(M.nn_patch_distance_levels(sample[:, :20, :20], ref, levels=3)) == 2


def test_contact_sheet_is_bounded_and_holds_every_image(ref):
    big = np.ascontiguousarray(np.tile(ref, (1, 4, 6)))  # 384x192
    sheet = contact_sheet(big, [big] * 5, ["a\nb"] * 5, max_width=1000, max_cols=3)
    assert sheet.width <= 1000
    assert sheet.height > 2 * (sheet.width // 3) * 192 / 384  # two rows of images
    tiny = contact_sheet(ref, [ref], ["seed 0"])
    assert tiny.width >= 2 * W  # small images are enlarged, not shrunk


# --------------------------------------------------------------------------- sidpipe eval


def _write(tmp_path: Path, name: str, img: np.ndarray) -> Path:
    path = tmp_path / name
    save_image(path, img)
    return path


def test_eval_cli_writes_table_json_and_sheet(tmp_path, ref, sample):
    r = _write(tmp_path, "ref.png", ref)
    s0 = _write(tmp_path, "s0.png", sample)
    s1 = _write(tmp_path, "s1.png", np.ascontiguousarray(np.roll(ref, (5, 7), axis=(1, 2))))
    out_json, out_sheet = tmp_path / "m.json", tmp_path / "sheet.png"
    res = runner.invoke(app, ["eval", str(r), str(s0), str(s1), "--json", str(out_json),
                              "--sheet", str(out_sheet), "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "s0.png" in res.output and "s1.png" in res.output and "mean" in res.output
    assert "pixel diversity" in res.output and "needs --inception-weights" in res.output
    doc = json.loads(out_json.read_text())
    assert [Path(x["file"]).name for x in doc["samples"]] == ["s0.png", "s1.png"]
    assert doc["settings"]["seed"] == 2
    # The JSON holds what the library computes on the same (8-bit) files.
    imgs = [load_image(p) for p in (r, s0, s1)]
    want = M.patch_swd(imgs[1], imgs[0], seed=2)
    assert doc["samples"][0]["swd"] == pytest.approx(want, rel=1e-9)
    assert doc["samples"][1]["copy_rate"] > doc["samples"][0]["copy_rate"]
    assert doc["mean"]["swd"] == pytest.approx(np.mean([x["swd"] for x in doc["samples"]]))
    assert doc["pixel_diversity"] == pytest.approx(M.pixel_diversity(imgs[1:]))
    sheet = Image.open(out_sheet)
    assert sheet.width >= 3 * W and sheet.height > H
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "not found"),
        ("notimage", "not an image"),
        ("tiny", "too small"),
        ("json_suffix", "--json must end in .json"),
        ("sheet_folder", "folder does not exist"),
        ("bad_stride", "--query-stride"),
        ("bad_weights", "inception weights"),
        ("no_samples", "at least one SAMPLE"),
    ],
)
def test_eval_cli_bad_input_fails_with_one_line(tmp_path, ref, case, needle):
    r = _write(tmp_path, "ref.png", ref)
    good = _write(tmp_path, "good.png", ref)
    (tmp_path / "notimage.png").write_text("hello")
    Image.new("RGB", (5, 5)).save(tmp_path / "tiny.png")
    (tmp_path / "weights.pt").write_text("not a torch file")
    out_json, out_sheet = tmp_path / "m.json", tmp_path / "sheet.png"
    args = {
        "missing": [str(tmp_path / "nope.png")],
        "notimage": [str(tmp_path / "notimage.png")],
        "tiny": [str(tmp_path / "tiny.png")],
        "json_suffix": [str(good), "--json", str(tmp_path / "m.txt")],
        "sheet_folder": [str(good), "--sheet", str(tmp_path / "no" / "sheet.png")],
        "bad_stride": [str(good), "--query-stride", "0"],
        "bad_weights": [str(good), "--inception-weights", str(tmp_path / "weights.pt")],
        "no_samples": [],
    }[case]
    before = set(tmp_path.iterdir())
    res = runner.invoke(app, ["eval", str(r), *args, "--json", str(out_json), "--sheet", str(out_sheet)]
                        if case not in ("json_suffix", "sheet_folder") else ["eval", str(r), *args])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sidpipe: error:") and needle in lines[0], res.output
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary files left


# --------------------------------------------------------------------------- SIFID (mechanics only)


def _fake_inception(path: Path, seed: int = 0) -> None:
    """A state dict with InceptionV3's trunk key names and random values (no real weights exist here)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, cin, cout in (("Conv2d_1a_3x3", 3, 32), ("Conv2d_2a_3x3", 32, 32), ("Conv2d_2b_3x3", 32, 64)):
        state[f"module.{name}.conv.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.3
        state[f"module.{name}.bn.weight"] = torch.ones(cout)
        state[f"module.{name}.bn.bias"] = torch.full((cout,), 0.1)
        state[f"module.{name}.bn.running_mean"] = torch.zeros(cout)
        state[f"module.{name}.bn.running_var"] = torch.ones(cout)
    state["fc.weight"] = torch.zeros(2, 2)  # deeper layers are ignored
    torch.save(state, path)


def test_sifid_mechanics_with_a_user_weights_file(tmp_path, ref, cases):
    from sidpipe.sifid import SIFIDUnavailable, load_sifid

    wfile = tmp_path / "inception.pth"
    _fake_inception(wfile)
    sifid = load_sifid(wfile)
    assert sifid(ref, ref) == pytest.approx(0.0, abs=1e-6)
    assert sifid(cases["noise"], ref) > 0.0
    assert sifid(cases["noise"], ref) == sifid(cases["noise"], ref)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(SIFIDUnavailable, match="lacks"):
        load_sifid(tmp_path / "partial.pth")
    r = _write(tmp_path, "ref.png", ref)
    res = runner.invoke(app, ["eval", str(r), str(r), "--inception-weights", str(wfile)])
    assert res.exit_code == 0, res.output
    assert "SIFID" in res.output.splitlines()[1] and "needs --inception-weights" not in res.output


# --------------------------------------------------------------------------- bench quality


def test_bench_quality_writes_a_report(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.open(BALLOONS).convert("RGB").resize((48, 36)).save(refs / "balloons.png")
    Image.open(DATA / "night_sky.png").convert("RGB").resize((52, 32)).save(refs / "night_sky.png")
    out = tmp_path / "report"
    res = runner.invoke(app, ["bench", "quality", str(refs), "--samples", "2", "--out", str(out),
                              "--set", "steps=2"])
    assert res.exit_code == 0, res.output
    assert "[2/2]" in res.output and "ETA" in res.output
    md = (out / "report.md").read_text()
    assert "| SWD |" in md and "± " in md and "[balloons](sheets/balloons.png)" in md
    assert "| steps | 2 |" in md  # the resolved configuration is recorded
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["steps"] == 2 and results["seeds"] == [0, 1]
    assert [im["name"] for im in results["images"]] == ["balloons", "night_sky"]
    per_image = [im["mean"]["swd"] for im in results["images"]]
    assert results["summary"]["swd"]["mean"] == pytest.approx(np.mean(per_image))
    assert results["summary"]["swd"]["std"] == pytest.approx(np.std(per_image))
    for im in results["images"]:
        assert len(im["rows"]) == 2 and im["pixel_diversity"] > 0
        assert (out / im["sheet"]).is_file()
        assert all((out / f).is_file() for f in im["samples"])
    assert Image.open(out / "per_image.png").size[0] > 500
    # Sample k is the runner's sample with seed k.
    second = load_image(out / "samples" / "balloons_s1.png")
    assert second.shape == (3, 36, 48)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case,needle", [("missing", "not found"), ("empty", "no images"),
                                         ("tiny", "at least"), ("notreport", "not a sidpipe report"),
                                         ("badset", "unknown config key")])
def test_bench_quality_bad_input(tmp_path, case, needle):
    refs = tmp_path / "refs"
    refs.mkdir()
    out = tmp_path / "report"
    if case == "tiny":
        Image.new("RGB", (20, 20), "red").save(refs / "tiny.png")
    elif case in ("notreport", "badset"):
        Image.open(BALLOONS).convert("RGB").resize((56, 42)).save(refs / "a.png")
        if case == "notreport":
            out.mkdir()
            (out / "precious.txt").write_text("keep me")
    folder = tmp_path / "nope" if case == "missing" else refs
    extra = ["--set", "no_such_key=1"] if case == "badset" else []
    res = runner.invoke(app, ["bench", "quality", str(folder), "--samples", "1", "--out", str(out), *extra])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sidpipe: error:") and needle in lines[0], res.output
    assert "Traceback" not in res.output
    if case == "notreport":
        assert (out / "precious.txt").read_text() == "keep me"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_bench_quality_interrupted_run_leaves_partial_report_and_resumes(tmp_path):
    from sidpipe.quality import bench_quality, build_dir_for

    refs = tmp_path / "refs"
    refs.mkdir()
    Image.open(BALLOONS).convert("RGB").resize((48, 36)).save(refs / "a.png")
    Image.open(DATA / "aurora.png").convert("RGB").resize((54, 30)).save(refs / "b.png")
    paths = sorted(refs.iterdir())
    cfg = load_config("default", {"steps": 2})
    out = tmp_path / "rep"

    def stop_after_first(msg: str) -> None:
        if msg.startswith("[1/2]") and "done in" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_quality(paths, cfg, out, 1, log=stop_after_first)
    build = build_dir_for(out)
    assert not out.exists() and build.is_dir()
    partial = (build / "report.md").read_text()
    assert "PARTIAL: 1 of 2 images" in partial and "[a](sheets/a.png)" in partial and "[b]" not in partial
    # Without --resume the unfinished run is not silently overwritten; other settings cannot resume it.
    with pytest.raises(Exception, match="--resume"):
        bench_quality(paths, cfg, out, 1)
    with pytest.raises(Exception, match="different config"):
        bench_quality(paths, cfg.replace(steps=3), out, 1, resume=True)
    logs: list[str] = []
    results = bench_quality(paths, cfg, out, 1, resume=True, log=logs.append)
    assert any("a.png: already done" in m for m in logs)
    assert not any(m.startswith("[1/2]") and "generating" in m for m in logs)
    assert not results["partial"] and [im["name"] for im in results["images"]] == ["a", "b"]
    assert "PARTIAL" not in (out / "report.md").read_text() and not build.exists()
