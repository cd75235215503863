"""Latent mode: a diffusers VAE from local files, tiled encode/decode with global statistics and a measured
halo, bad inputs. Real diffusers models built from small configs (random weights), saved to a temporary
folder and loaded through the user path (`load_vae`, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sidpipe.cli import app
from sidpipe.codec import CodecError, load_vae, shipped_configs
from sidpipe.codec.tiled import NetState, TiledCodec, stat_boxes

from conftest import BALLOONS

runner = CliRunner()


def tiny_kl(attention: bool = True):
    """A FLUX-shaped AutoencoderKL (16 latent channels, 8x down, GroupNorms, mid attention), ~10^4 weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                         scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                         mid_block_add_attention=attention)


def tiny_tae():
    """A TAEF1-shaped AutoencoderTiny (default block counts: the real receptive field), narrow channels."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vae")
    dirs = {"kl": root / "kl", "noattn": root / "noattn", "tae": root / "tae", "pipe": root / "pipe"}
    tiny_kl().save_pretrained(dirs["kl"])
    tiny_kl(attention=False).save_pretrained(dirs["noattn"])
    tiny_tae().save_pretrained(dirs["tae"])
    tiny_kl().save_pretrained(dirs["pipe"] / "vae")
    (dirs["pipe"] / "model_index.json").write_text("{}")
    return dirs


@pytest.fixture(scope="module")
def tiled_noattn(vae_dirs) -> TiledCodec:
    return TiledCodec(load_vae(vae_dirs["noattn"]))


@pytest.fixture(scope="module")
def tiled_kl(vae_dirs) -> TiledCodec:
    return TiledCodec(load_vae(vae_dirs["kl"]))


@pytest.fixture(scope="module")
def tiled_tae(vae_dirs) -> TiledCodec:
    return TiledCodec(load_vae(vae_dirs["tae"]))


def whole_decode(codec, z: torch.Tensor) -> torch.Tensor:
    """diffusers' own decode of the whole latent (the reference the tiles must match)."""
    with torch.no_grad():
        return codec.model.decode(z[None] / codec.scale + codec.shift).sample[0].clamp(-1, 1)


def latent(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(16, h, w, generator=torch.Generator().manual_seed(seed))


# Loading --------------------------------------------------------------------------------------------------

def test_load_folder_pipeline_folder_and_single_file(vae_dirs):
    folder = load_vae(vae_dirs["kl"])
    assert (folder.kind, folder.latent_channels, folder.factor) == ("kl", 16, 8)
    assert (folder.scale, folder.shift) == (pytest.approx(0.3611), pytest.approx(0.1159))
    pipe = load_vae(vae_dirs["pipe"])
    single = load_vae(vae_dirs["kl"] / "diffusion_pytorch_model.safetensors", str(vae_dirs["kl"]))
    z = latent(6, 5)
    ref = whole_decode(folder, z)
    for other in (pipe, single):
        assert torch.equal(whole_decode(other, z), ref)
    tae = load_vae(vae_dirs["tae"])
    assert (tae.kind, tae.latent_channels, tae.factor, tae.scale, tae.shift) == ("tiny", 16, 8, 1.0, 0.0)
    assert folder.fingerprint == single.fingerprint and folder.fingerprint != tae.fingerprint


def test_shipped_configs_build_the_real_architectures():
    from diffusers import AutoencoderKL, AutoencoderTiny

    configs = shipped_configs()
    assert {"flux", "sd", "sdxl", "taef1", "taesd"} <= set(configs)
    expect = {"flux": (16, 0.3611, 0.1159), "sd": (4, 0.18215, None), "sdxl": (4, 0.13025, None),
              "taef1": (16, 1.0, 0.0), "taesd": (4, 1.0, 0.0)}
    for name, (channels, scale, shift) in expect.items():
        cfg = json.loads(configs[name].read_text())
        cls = AutoencoderTiny if cfg["_class_name"] == "AutoencoderTiny" else AutoencoderKL
        with torch.device("meta"):
            model = cls.from_config(cfg)
        assert model.config.latent_channels == channels and model.config.scaling_factor == scale
        assert model.config.get("shift_factor") == shift
    with torch.device("meta"):
        flux = AutoencoderKL.from_config(json.loads(configs["flux"].read_text()))
    # 83.8 M parameters: the FLUX.1 VAE's size
    assert 83e6 < sum(p.numel() for p in flux.parameters()) < 84e6


def _bad_inputs(tmp_path: Path, vae_dirs) -> dict[str, tuple[list[str], str]]:
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((vae_dirs["kl"] / "config.json").read_text())
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    weights = str(vae_dirs["kl"] / "diffusion_pytorch_model.safetensors")
    return {
        "no --vae": ([], "needs --vae"),
        "missing folder": (["--vae", str(tmp_path / "nope")], "no such file"),
        "config without weights": (["--vae", str(no_weights)], "no weights"),
        "shape mismatch": (["--vae", weights, "--vae-config", "flux"], "has shape"),
        "corrupt safetensors": (["--vae", str(corrupt), "--vae-config", "flux"], "not a readable .safetensors"),
        "single file without config": (["--vae", weights], "--vae-config"),
        "unknown config": (["--vae", weights, "--vae-config", "nosuch"], "neither a shipped config"),
        "folder without config": (["--vae", str(tmp_path)], "no config.json"),
    }


def test_vae_check_bad_inputs_fail_cleanly(tmp_path, vae_dirs):
    for name, (args, needle) in _bad_inputs(tmp_path, vae_dirs).items():
        res = runner.invoke(app, ["vae-check", str(BALLOONS), *args])
        assert res.exit_code == 1, (name, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), (name, res.exception)
        assert needle in res.stderr and "Traceback" not in res.output, (name, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, (name, res.stderr)


def test_vae_check_prints_psnr_and_throughput(vae_dirs):
    res = runner.invoke(app, ["vae-check", str(BALLOONS), "--vae", str(vae_dirs["tae"]), "--max-side", "128"])
    assert res.exit_code == 0, res.output
    assert "round trip PSNR:" in res.output and "MP/s" in res.output and "latent px, encoder" in res.output


def test_load_errors_are_codec_errors(tmp_path, vae_dirs):
    with pytest.raises(CodecError, match="--vae-config is for a single weights file"):
        load_vae(vae_dirs["kl"], "flux")


# Tiled decode / encode ----------------------------------------------------------------------------------

def test_receptive_field_is_measured(tiled_noattn, tiled_tae):
    # RF = 6 + 3.75 (L + 1) latent px for a KL decoder with layers_per_block L = 1: 13.5; TAE: 18.125
    # (counted here as the farthest changed output pixel's latent pixel: 14 and 18)
    assert tiled_noattn.decoder.receptive_field == 14
    assert tiled_tae.decoder.receptive_field == 18
    assert torch.backends.mkldnn.is_available() is False or torch._C._get_mkldnn_enabled()  # switched back on
    assert tiled_noattn.decoder.halo == 14 and tiled_noattn.encoder.halo % 8 == 0


def test_tiled_decode_equals_whole_and_is_sensitive(tiled_noattn):
    codec, net = tiled_noattn.codec, tiled_noattn.decoder
    z = latent(40, 32)
    whole = whole_decode(codec, z)
    state = tiled_noattn.decode_state(z, stats_tile=24)
    assert len(state.stats) == len(net.norms) > 10
    tiled = tiled_noattn.decode(z, tile=16, state=state)
    err = float((tiled - whole).abs().max())
    assert err <= 1e-4, err
    # the halo two latent px below the measured receptive field: the test can see it
    short = tiled_noattn.decode(z, tile=16, state=state, halo=net.halo - 2)
    assert float((short - whole).abs().max()) > 1e-6
    # negative control: every tile its own GroupNorm statistics (what diffusers' enable_tiling does)
    native = tiled_noattn.decode(z, tile=16, state=NetState(mode="native"))
    assert float((native - whole).abs().max()) > 100 * max(err, 1e-6)


@pytest.mark.slow
def test_attention_is_global_and_grid_independent(tiled_kl):
    codec = tiled_kl.codec
    z = latent(32, 24, seed=2)
    whole = whole_decode(codec, z)
    a = tiled_kl.decode(z, tile=12, stats_tile=16)
    assert float((a - whole).abs().max()) <= 1e-4  # exact global attention (the latent is small)
    # forced strided keys/values: not the whole decode any more, but the same whatever the decode tiling
    strided = tiled_kl.decode_state(z, stats_tile=16, max_tokens=50)
    assert strided.kv["mid_block.attentions.0/k"].shape[0] == 8 * 6  # stride 4 over 32 x 24
    sa = tiled_kl.decode(z, tile=12, state=strided)
    sb = tiled_kl.decode(z, tile=16, state=strided)
    assert float((sa - sb).abs().max()) <= 1e-5
    assert float((sa - whole).abs().max()) > 1e-4


def test_tiny_autoencoder_tiled_equals_whole(tiled_tae):
    codec = tiled_tae.codec
    z = latent(64, 48, seed=3)
    whole = whole_decode(codec, z)
    tiled = tiled_tae.decode(z, tile=16)
    assert float((tiled - whole).abs().max()) <= 1e-5
    # fully local (no GroupNorm, no attention): per-tile decoding needs no statistics pass
    assert tiled_tae.decoder.is_local and not tiled_tae.decode_state(z).stats


def test_largest_decoder_input_is_one_tile_plus_halo(tiled_tae):
    net = tiled_tae.decoder
    net.max_input = (0, 0)
    tile = 8
    z = latent(3 * tile, 10 * tile, seed=4)
    tiled_tae.decode(z, tile=tile)
    assert net.max_input[1] <= tile + 2 * net.halo < 10 * tile


def test_tiled_encode_equals_whole(tiled_noattn, tiled_kl, tiled_tae):
    x = torch.rand(3, 160, 128, generator=torch.Generator().manual_seed(5)) * 2 - 1
    for tc in (tiled_noattn, tiled_tae):
        whole = tc.codec.encode_net(x[None])[0]
        tiled = tc.encode(x, tile=8, stats_tile=8)
        assert float((tiled - whole).abs().max()) <= 1e-4


def test_stratified_statistics_tiles():
    grid = stat_boxes((640, 480), 64, 1000)
    assert len(grid) == 10 * 8
    sample = stat_boxes((640, 480), 64, 12)
    assert 6 <= len(sample) <= 12 and len(set(sample)) == len(sample) and set(sample) <= set(grid)
    rows = {b[0] for b in sample}
    cols = {b[2] for b in sample}
    assert len(rows) >= 3 and len(cols) >= 2  # spread over the image, not one corner


# Latent sampling through `sidpipe run` ------------------------------------------------------------------

# The latent preset (p = 7, rho = inf, eta = 1) at the automatic precision; 32-latent-px sampling tiles
# (--tile-size 256); decode tiles and statistics tiles of 16 latent px (several of each).
LATENT_QUICK = ["--preset", "latent", "--steps", "2", "--set", "num_scales=2", "--set", "vae_tile=16",
                "--set", "vae_stats_tile=16", "--bit-depth", "16", "--quiet"]


@pytest.fixture(scope="module")
def small_ref(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((164, 124)).save(path)  # not a multiple of 8: centre crop
    return path


def read_tiff(path: Path):
    import numpy as np
    import tifffile

    return np.asarray(tifffile.imread(path))


@pytest.mark.parametrize("vae", ["tae", pytest.param("kl", marks=pytest.mark.slow)])
def test_latent_run_tiled_equals_in_memory_and_bigtiff_reads_back(tmp_path, small_ref, vae_dirs, vae):
    import numpy as np
    import pyvips

    common = [str(small_ref), "--vae", str(vae_dirs[vae]), "--size", "300x180", "--seed", "4", *LATENT_QUICK]
    mem, ooc = tmp_path / "mem.tif", tmp_path / "ooc.tif"
    res = runner.invoke(app, ["run", *common, "--out", str(mem)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", *common, "--out", str(ooc), "--workdir", str(tmp_path / "wd"), "--tile-size", "256",
                              "--bigtiff", "always"])
    assert res.exit_code == 0, res.output
    a, b = read_tiff(mem), read_tiff(ooc)
    assert a.shape == (180, 300, 3) and a.dtype == np.uint16
    assert np.array_equal(a, b)  # tiled sampling, streamed decode == in memory, bit for bit
    assert a.std() > 100  # not a constant image (random weights: noise, not a result)
    import tifffile

    with tifffile.TiffFile(ooc) as tif:
        assert tif.is_bigtiff
    image = pyvips.Image.new_from_file(str(ooc), fail_on="warning")
    assert (image.width, image.height, image.bands) == (300, 180, 3)
    assert np.array_equal(np.ndarray(buffer=image.write_to_memory(), dtype=np.uint16, shape=(180, 300, 3)), b)
    assert not (tmp_path / "wd").exists()  # finished: the run directory is removed


@pytest.mark.slow
def test_kill_during_decode_then_resume_equals_uninterrupted(tmp_path, small_ref, vae_dirs):
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    def cmd(out: Path, workdir: Path) -> list[str]:
        return [sys.executable, "-m", "sidpipe.cli", "run", str(small_ref), "--vae", str(vae_dirs["kl"]),
                "--size", "320x240", "--out", str(out), "--workdir", str(workdir), "--tile-size", "256",
                *LATENT_QUICK]

    whole = tmp_path / "whole.tif"
    subprocess.run(cmd(whole, tmp_path / "w0"), check=True, capture_output=True, timeout=600)
    out, wd = tmp_path / "killed.tif", tmp_path / "w1"
    proc = subprocess.Popen(cmd(out, wd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    decode_markers = wd / "markers" / "decode"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if decode_markers.exists() and len(list(decode_markers.iterdir())) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-decode"
    assert not out.exists() and not (wd / "markers" / "decode.done").exists()
    done_before = len(list(decode_markers.iterdir()))
    assert 2 <= done_before < 30 * 40 // 64  # killed between the first and the last decode tile
    subprocess.run(cmd(out, wd), check=True, capture_output=True, timeout=600)
    assert np.array_equal(read_tiff(out), read_tiff(whole))


def test_run_bad_inputs_fail_cleanly(tmp_path, small_ref, vae_dirs):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    four = tmp_path / "tae4"
    AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8,) * 4,
                    decoder_block_out_channels=(8,) * 4).save_pretrained(four)
    base = [str(small_ref), "--preset", "latent", "--steps", "1", "--set", "num_scales=1", "--quiet"]
    cases = {name: (["--codec", "vae", *args], needle) for name, (args, needle) in _bad_inputs(tmp_path, vae_dirs).items()}
    cases["no --vae"] = (["--codec", "vae"], "needs --vae")
    cases["--vae with the pixel codec"] = (["--codec", "pixel", "--vae", str(vae_dirs["kl"])], "for --codec vae")
    for name, (args, needle) in cases.items():
        out = tmp_path / "out.tif"
        res = runner.invoke(app, ["run", *base, *args, "--out", str(out)])
        assert res.exit_code == 1, (name, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), (name, res.exception)
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, (name, res.stderr)
        assert not out.exists() and not (tmp_path / "out.tif.sidpipe").exists(), name
    # a run directory of 16-channel latents resumed with a 4-channel VAE
    wd = tmp_path / "wd"
    res = runner.invoke(app, ["run", *base, "--codec", "vae", "--vae", str(vae_dirs["tae"]), "--out",
                              str(tmp_path / "a.tif"), "--workdir", str(wd), "--keep-workdir"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", *base, "--codec", "vae", "--vae", str(four), "--out", str(tmp_path / "b.tif"),
                              "--workdir", str(wd)])
    assert res.exit_code == 1 and "16-channel latents but this VAE has 4" in res.stderr, res.output
    assert not (tmp_path / "b.tif").exists()


def test_statistics_pass_checkpoints_change_nothing(tiled_kl):
    """The statistics pass resumes each round after the last finished block of every tile; without that
    cache (every round from the input) the frozen statistics and keys/values are the same, bit for bit."""
    net = tiled_kl.decoder
    z = latent(20, 16, seed=6)
    cached = tiled_kl.decode_state(z, stats_tile=8)
    budget, net.cache_bytes = net.cache_bytes, 0
    try:
        plain = tiled_kl.decode_state(z, stats_tile=8)
    finally:
        net.cache_bytes = budget
    assert set(cached.stats) == set(plain.stats) == set(net.norms)
    assert all(torch.equal(cached.stats[k][0], plain.stats[k][0]) and torch.equal(cached.stats[k][1], plain.stats[k][1])
               for k in net.norms)
    assert set(cached.kv) == set(plain.kv) and all(torch.equal(cached.kv[k], plain.kv[k]) for k in plain.kv)
