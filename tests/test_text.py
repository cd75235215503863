"""text-style / text-content (CLIP guidance) with a tiny random CLIP built from a config, saved with
save_pretrained and loaded through the user path (`--clip DIR`: `apps.clip.Clip`, transformers,
local files only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sidpipe.apps import text
from sidpipe.apps.clip import Augment, Clip, generator
from sidpipe.cli import app
from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.plan import make_denoiser, make_plan
from sidpipe.pyramid import resize
from sidpipe.runner import generate
from sidpipe.sample.invert import invert, reconstruct

from conftest import tiled_result

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
PROMPT = "a red fire"


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of bytes a byte-level BPE vocabulary uses (GPT-2 / CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tiny_clip(folder: Path) -> Path:
    """A random CLIP (2-layer, width-32 towers, 32-px images, patch 8) and a byte-level BPE tokenizer with a
    few merges, saved as a Hugging Face checkpoint folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    merges = ["r e</w>", "f i", "fi re</w>", "t h", "th e</w>"]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    src = folder.parent / (folder.name + "-tokenizer-src")
    src.mkdir(exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory) -> Path:
    """The bundled small balloons shrunk to 40 x 30: two scales of p = 7, three of p = 5."""
    from PIL import Image

    path = tmp_path_factory.mktemp("text") / "ref.png"
    Image.open(ROOT / "examples" / "apps" / "balloons_small.png").convert("RGB").resize((40, 30), Image.LANCZOS).save(path)
    return path


def style_cfg(**kw):
    return load_config("text-style", {"steps": 8, "seed": 3, **kw})


def content_cfg(**kw):
    return load_config("text-content", {"patch_size": 5, "steps": 6, "seed": 2, "num_scales": 3, **kw})


def run_app(kind, ref_path, clip_dir, cfg, strength, **kw):
    ref = load_image(ref_path)
    plan = make_plan(cfg, ref.shape[-2:])
    guidance = text.Guidance(strength=strength, views=4, **kw.pop("guidance", {}))
    hooks = text.make(kind, ref_path, clip_dir, PROMPT, guidance, cfg, **kw)(plan)
    return generate(ref, cfg, plan=plan, hooks=hooks)[0], hooks


def clip_loss(clip_dir, image, templates=None) -> float:
    """L_CLIP of an output under the tiny model, averaged over 8 fixed augmentation seeds."""
    clip = Clip(clip_dir)
    targets = clip.text_embeddings(PROMPT)
    x = torch.from_numpy(np.ascontiguousarray(image))
    with torch.no_grad():
        return float(np.mean([clip.loss(x, targets, generator(99, i), Augment(views=8)) for i in range(8)]))


@pytest.fixture(scope="module")
def style_runs(ref_path, clip_dir):
    cfg = style_cfg()
    guided, hooks = run_app("style", ref_path, clip_dir, cfg, 1.0, level=0.5)
    plain, _ = run_app("style", ref_path, clip_dir, cfg, 0.0, level=0.5)
    return guided, plain, hooks


def test_style_strength_zero_is_the_reconstruction_bit_for_bit(ref_path, style_runs):
    _, plain, _ = style_runs
    cfg = style_cfg()
    ref = torch.from_numpy(load_image(ref_path))
    plan = make_plan(cfg, ref.shape[-2:])
    own = make_denoiser(ref, "exact", cfg, plan, scale=0)
    x, k = invert(ref, own, level=0.5, steps=cfg.steps, seed=cfg.seed)
    expected = reconstruct(x, own, k=k, steps=cfg.steps).clamp(-1, 1).numpy()
    assert k == 4 and np.array_equal(plain, expected)


def test_style_guidance_lowers_the_clip_loss(clip_dir, style_runs):
    guided, plain, _ = style_runs
    assert np.abs(guided - plain).max() > 0.05
    assert clip_loss(clip_dir, guided) < clip_loss(clip_dir, plain) - 0.01


@pytest.mark.parametrize("fill", [0.5, 0.2])
def test_energy_mask_touches_the_requested_fraction(ref_path, clip_dir, fill):
    cfg = style_cfg(steps=4)
    _, hooks = run_app("style", ref_path, clip_dir, cfg, 1.0, level=1.0, guidance={"fill": fill})
    masks = hooks.start.__self__.guides[cfg.seed].masks
    assert len(masks) == 4  # one per guided step (recomputed every step)
    for m in masks:
        assert abs(float(m.float().mean()) - fill) < 0.02
    g = torch.randn(3, 50, 60)
    sparse, mask = text.energy_mask(g, fill)
    assert abs(float(mask.float().mean()) - fill) < 0.01
    assert bool((sparse[:, ~mask] == 0).all()) and bool((sparse.norm(dim=0)[mask] < g.norm(dim=0)[mask]).all())


@pytest.fixture(scope="module")
def content_runs(ref_path, clip_dir):
    cfg = content_cfg()
    guided, hooks = run_app("content", ref_path, clip_dir, cfg, 0.5, guidance={"stop": 2, "momentum": 0.2})
    zero, _ = run_app("content", ref_path, clip_dir, cfg, 0.0)
    plain = generate(load_image(ref_path), cfg)[0]
    return guided, zero, plain, hooks


def test_content_strength_zero_is_the_plain_sample_bit_for_bit(content_runs):
    _, zero, plain, _ = content_runs
    assert np.array_equal(zero, plain)


def test_content_guidance_lowers_the_clip_loss_with_one_mask(clip_dir, content_runs):
    guided, _, plain, hooks = content_runs
    guide = hooks.start.__self__.guides[2]
    assert abs(float(guide.first_mask.float().mean()) - 0.5) < 0.02  # made once, at the first guided scale
    assert clip_loss(clip_dir, guided) < clip_loss(clip_dir, plain) - 0.01


@pytest.mark.slow
def test_unguided_finer_scales_tiled_equal_in_memory(clip_dir, tmp_path, monkeypatch):
    """With the guidance limit below the finest scale (124 x 93, 2 x 2 tiles of 64), that scale runs through the
    tiled sampler unguided (style: from the reference noised to l; content: from noise) and gives the
    in-memory pixels."""
    ref_path = ROOT / "examples" / "apps" / "balloons_small.png"
    monkeypatch.setattr(text, "GUIDE_MAX_PIXELS", 3000)
    for kind, cfg, kw in (("style", style_cfg(num_scales=2, steps=6), {"level": 0.5}), ("content", content_cfg(), {})):
        mem, hooks = run_app(kind, ref_path, clip_dir, cfg, 0.5, **kw)
        assert hooks.start.__self__.low == 1
        def hooks_for(plan, kind=kind, cfg=cfg, kw=kw):
            guidance = text.Guidance(strength=0.5, views=4)
            return text.make(kind, ref_path, clip_dir, PROMPT, guidance, cfg, **kw)(plan)
        (tmp_path / kind).mkdir()
        tiled = tiled_result(ref_path, cfg, hooks_for, tmp_path / kind, tile=64)
        assert np.array_equal(mem, tiled), kind


def test_roi_leaves_pixels_beyond_the_box_and_receptive_radius_unchanged(ref_path, clip_dir, tmp_path):
    cfg = content_cfg(steps=10)
    roi = (12, 8, 14, 12)
    out, hooks = run_app("content", ref_path, clip_dir, cfg, 0.1, roi=roi, iters=10, level=0.3)
    job = hooks.start.__self__
    assert job.k == 3 and job.radius == 3 * (2 + 1)  # 3 steps x (patch radius 2 + fold window radius 1)
    ref = load_image(ref_path)
    keep = ~job.hole.numpy()
    assert keep.sum() > 0.25 * keep.size
    assert np.array_equal(out[:, keep], ref[:, keep])
    x, y, w, h = roi
    assert np.abs(out[:, y:y + h, x:x + w] - ref[:, y:y + h, x:x + w]).mean() > 0.02
    # the command: the written file equals REF's pixels there too
    dst = tmp_path / "roi.png"
    res = runner.invoke(app, ["text-content", str(ref_path), "--text", PROMPT, "--clip", str(clip_dir), "--roi",
                              "12,8,14,12", "--iters", "5", "--views", "4", "--noise-level", "0.3", "--steps", "10",
                              "--patch-size", "5", "--set", "num_scales=3", "-o", str(dst), "-q"])
    assert res.exit_code == 0, res.output
    written = load_image(dst)
    assert np.array_equal(written[:, keep], ref[:, keep])


def test_text_style_command_writes_the_reference_size(ref_path, clip_dir, tmp_path):
    dst = tmp_path / "ts.png"
    res = runner.invoke(app, ["text-style", str(ref_path), "--text", PROMPT, "--clip", str(clip_dir), "--steps", "6",
                              "--views", "4", "-o", str(dst), "-q"])
    assert res.exit_code == 0, res.output
    assert load_image(dst).shape == (3, 30, 40)


@pytest.fixture(scope="module")
def not_clip(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad")
    empty = base / "empty"
    empty.mkdir()
    bert = base / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    broken = base / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (broken / "tokenizer.json").write_text("{}")
    junk = base / "junk.png"
    junk.write_text("not an image")
    return {"empty": empty, "bert": bert, "broken": broken, "junk": junk, "missing": base / "nowhere"}


@pytest.mark.parametrize("cmd, args, needle", [
    ("text-style", ["--clip", "{missing}"], "CLIP folder not found"),
    ("text-style", ["--clip", "{empty}"], "config.json is missing"),
    ("text-content", ["--clip", "{bert}"], "not a CLIP checkpoint"),
    ("text-style", ["--clip", "{broken}"], "cannot load the CLIP checkpoint"),
    ("text-style", ["--clip", "{clip}", "--text", "  "], "--text is empty"),
    ("text-style", ["--clip", "{clip}", "--noise-level", "0"], "noise level must be in (0, 1]"),
    ("text-style", ["--clip", "{clip}", "--noise-level", "1.5"], "noise level must be in (0, 1]"),
    ("text-content", ["--clip", "{clip}", "--roi", "1,1,3,3", "--noise-level", "-0.2"], "noise level must be in (0, 1]"),
    ("text-content", ["--clip", "{clip}", "--roi", "30,20,40,40"], "--roi 30,20,40,40 is not a box"),
    ("text-content", ["--clip", "{clip}", "--fill", "0"], "--fill must be in (0, 1]"),
    ("text-style", ["--clip", "{clip}", "--ref", "{junk}"], ""),
])
def test_bad_input_is_one_line_and_writes_nothing(ref_path, clip_dir, not_clip, tmp_path, cmd, args, needle):
    paths = {**{k: str(v) for k, v in not_clip.items()}, "clip": str(clip_dir)}
    args = [a.format(**paths) for a in args]
    image = str(ref_path)
    if args[-2:-1] == ["--ref"]:
        image, args = args[-1], args[:-2]
        needle = "junk.png"
    if "--text" not in args:
        args += ["--text", PROMPT]
    dst = tmp_path / "o.png"
    res = runner.invoke(app, [cmd, image, *args, "--steps", "4", "-o", str(dst)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and needle in lines[0], res.output
    assert lines[0].startswith("sidpipe: error:") and not dst.exists()
    assert not any(tmp_path.iterdir())


def test_text_style_above_one_megapixel_gets_the_fewest_scales_with_a_guided_coarsest():
    one = load_config("text-style")
    assert text.scales_for(one, 1000, 1000).num_scales == 1          # <= 2^20 px: the official single scale
    assert text.scales_for(one, 2048, 2048).num_scales == 2          # 1024^2 = 2^20 at the coarsest
    assert text.scales_for(one, 3000, 5000).num_scales == 3          # 750 x 1250 = 0.94 MP
    assert text.scales_for(one.replace(num_scales=4), 3000, 5000).num_scales == 4  # the user's choice stands
    plan = make_plan(text.scales_for(one, 3000, 5000).replace(width=5000, height=3000), (3000, 5000))
    assert text.guided_scales(plan) == [2]


def test_roi_tiled_equals_in_memory(clip_dir, tmp_path):
    """--roi through the tiled sampler (124 x 93, tiles of 64): the edited box, the fixed coarser scales and the
    known-region finish give the in-memory pixels."""
    ref_path = ROOT / "examples" / "apps" / "balloons_small.png"
    cfg = content_cfg(steps=10)
    kw = {"roi": (70, 20, 30, 25), "iters": 3, "level": 0.2}
    mem, _ = run_app("content", ref_path, clip_dir, cfg, 0.1, **kw)

    def hooks_for(plan):
        return text.make("content", ref_path, clip_dir, PROMPT, text.Guidance(strength=0.1, views=4), cfg, **kw)(plan)

    assert np.array_equal(mem, tiled_result(ref_path, cfg, hooks_for, tmp_path, tile=64))


def test_the_documented_checkpoint_formats_load_alike(clip_dir, tmp_path):
    """pytorch_model.bin instead of model.safetensors, vocab.json + merges.txt instead of tokenizer.json."""
    import shutil

    from safetensors.torch import load_file

    alt = tmp_path / "alt"
    alt.mkdir()
    shutil.copy(clip_dir / "config.json", alt)
    torch.save(load_file(clip_dir / "model.safetensors"), alt / "pytorch_model.bin")
    src = clip_dir.parent / (clip_dir.name + "-tokenizer-src")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, alt)
    assert torch.equal(Clip(alt).text_embeddings(PROMPT), Clip(clip_dir).text_embeddings(PROMPT))
