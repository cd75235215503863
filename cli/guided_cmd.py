"""Applications guided by another image or by text: analogy, i2i, text-style, text-content (hooks from `sidpipe.apps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app
from .common import SharedOptions, SizeOption, run_job, shared_options


@app.command("analogy")
@shared_options("analogy")
def analogy(
    structure: Annotated[Path, typer.Argument(help="Structure image: the layout to keep.", show_default=False)],
    style: Annotated[Path, typer.Argument(help="Style image: the reference whose patches draw it.", show_default=False)],
    *,
    noise_level: Annotated[Optional[float], typer.Option("--noise-level", help="How far the structure is inverted, "
                                                         "in (0, 1]: lower keeps more of it (useful 0.2-1.0; default "
                                                         "0.5, 0.2 with --codec vae).")] = None,
    short_side: Annotated[Optional[int], typer.Option("--short-side", help="Output short side in px (default: the "
                                                      "style image's); the aspect is the structure's.")] = None,
    shared: SharedOptions,
) -> None:
    """Draw STRUCTURE's layout with STYLE's patches (the structure's coarsest scale inverted, then denoised with STYLE's).

    In latent mode (--preset analogy-latent --vae DIR) both images are encoded with the VAE and the result decoded."""
    from sidpipe.apps import analogy as job
    from sidpipe.io.lazy import open_image

    def build(cfg):
        width, height = job.output_size(structure, style, short_side)
        with open_image(style) as image:
            channels = image.shape[0]
        level = noise_level if noise_level is not None else (0.2 if cfg.codec == "vae" else 0.5)
        return cfg.replace(width=width, height=height), job.make(structure, channels, cfg, level)

    run_job(shared, style, app=build)


@app.command("i2i")
@shared_options("i2i")
def i2i(
    style: Annotated[Path, typer.Argument(help="Style reference: whose patches draw the output.", show_default=False)],
    content: Annotated[Path, typer.Argument(help="Content image: the layout and colours to keep (output size).",
                                            show_default=False)],
    *,
    mode: Annotated[str, typer.Option(help="sdedit (content noised to --noise-level at one scale, coarser scales "
                                      "fixed) | ilvr (the content's low frequencies guide every scale)")] = "sdedit",
    noise_level: Annotated[float, typer.Option("--noise-level", help="In (0, 1]: how much of the content is "
                                               "replaced at the starting scale.")] = 0.5,
    at_scale: Annotated[Optional[int], typer.Option("--at-scale", help="sdedit: the scale that starts from the "
                                                    "noised content (0 = finest; default 1, the second finest).")] = None,
    match_hist: Annotated[bool, typer.Option("--match-hist", help="Match the content's colour histogram to the "
                                             "style's first (SinDDM).")] = False,
    shared: SharedOptions,
) -> None:
    """Redraw CONTENT with STYLE's patches (image-to-image / style transfer)."""
    from sidpipe.apps import i2i as job
    from sidpipe.io.lazy import open_image
    from sidpipe.io.read import image_size

    def build(cfg):
        if not content.is_file():
            raise SidpipeError(f"content image not found: {content}")
        width, height = image_size(content)
        with open_image(style) as image:
            channels = image.shape[0]
        return cfg.replace(width=width, height=height), job.make(
            content, style, channels, cfg.steps, mode=mode, level=noise_level, at_scale=at_scale, match_hist=match_hist)

    run_job(shared, style, app=build)


TextOption = Annotated[str, typer.Option("--text", help="The prompt, e.g. \"Van Gogh style\".", show_default=False)]
ClipOption = Annotated[Path, typer.Option("--clip", help="Folder of a Hugging Face CLIP checkpoint (config.json, "
                                          "model.safetensors, tokenizer files), e.g. openai/clip-vit-base-patch32 "
                                          "copied in; never downloaded.", show_default=False)]
FillOption = Annotated[float, typer.Option("--fill", help="Fraction of pixels guided (the gradient-energy mask), "
                                           "in (0, 1].")]
ViewsOption = Annotated[int, typer.Option("--views", help="Augmented views per CLIP loss.")]


@app.command("text-style")
@shared_options("text-style")
def text_style(
    ref: Annotated[Path, typer.Argument(help="Image to restyle (PNG, JPEG or TIFF).", show_default=False)],
    *,
    text: TextOption,
    clip: ClipOption,
    noise_level: Annotated[float, typer.Option("--noise-level", help="How far REF is inverted, in (0, 1]: lower "
                                               "keeps more of it.")] = 0.3,
    strength: Annotated[float, typer.Option("--strength", help="Guidance step gamma (0 = unguided "
                                            "reconstruction).")] = 1.0,
    fill: FillOption = 0.5,
    momentum: Annotated[float, typer.Option("--momentum", help="Weight lambda of the new estimate against the "
                                            "previous guided one, in [0, 1].")] = 0.1,
    views: ViewsOption = 16,
    shared: SharedOptions,
) -> None:
    """Restyle REF toward a text prompt: REF inverted, then reconstructed from its own patches with CLIP guidance."""
    from sidpipe.apps import text as job
    from sidpipe.io.read import image_size

    def build(cfg):
        width, height = image_size(ref)
        cfg = job.scales_for(cfg.replace(width=width, height=height), height, width)
        guidance = job.Guidance(strength=strength, fill=fill, momentum=momentum, views=views)
        return cfg, job.make("style", ref, clip, text, guidance, cfg, level=noise_level, device=_device(cfg),
                             report=_reporter(shared))

    run_job(shared, ref, app=build)


@app.command("text-content")
@shared_options("text-content")
def text_content(
    ref: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)],
    *,
    text: TextOption,
    clip: ClipOption,
    roi: Annotated[Optional[str], typer.Option("--roi", help="x,y,w,h: edit only this box of REF (CLIP on the "
                                               "box, pasted back, finished by a few denoising steps nearby).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Guidance step gamma (default 0.5; "
                                                      "0.1 with --roi; 0 = unguided).")] = None,
    fill: FillOption = 0.5,
    momentum: Annotated[float, typer.Option("--momentum", help="Weight lambda of the new estimate inside the "
                                            "mask, in [0, 1].")] = 0.2,
    stop_guidance: Annotated[int, typer.Option("--stop-guidance", help="The finest scale's last N steps are "
                                               "unguided.")] = 3,
    iters: Annotated[int, typer.Option("--iters", help="--roi: CLIP gradient steps on the box.")] = 100,
    noise_level: Annotated[Optional[float], typer.Option("--noise-level", help="--roi: noise level the finest scale "
                                                         "is finished from, in (0, 1] (default 0.055).")] = None,
    views: ViewsOption = 16,
    size: SizeOption = None,
    shared: SharedOptions,
) -> None:
    """New images from REF's patches steered toward a text prompt by CLIP (or, with --roi, REF edited in a box)."""
    from sidpipe.apps import text as job

    from .apps_cmd import parse_ints

    def build(cfg):
        box = None if roi is None else parse_ints(roi, 4, "--roi", "10,20,40,30")
        if roi is None and noise_level is not None:
            raise SidpipeError("--noise-level is for --roi (text-content samples from noise)")
        gamma = strength if strength is not None else (0.1 if box is not None else 0.5)
        guidance = job.Guidance(strength=gamma, fill=fill, momentum=momentum, views=views, stop=stop_guidance)
        return cfg, job.make("content", ref, clip, text, guidance, cfg, level=noise_level, roi=box, iters=iters,
                             device=_device(cfg), report=_reporter(shared))

    run_job(shared, ref, size=size, app=build)


def _reporter(shared: SharedOptions):
    """One stderr line per in-memory guided stage (it runs before the plan line), silent with --quiet."""
    return None if shared.quiet else (lambda line: typer.echo(line, err=True))


def _device(cfg) -> str:
    from sidpipe.devices import resolve_device

    return str(resolve_device(cfg.device))
