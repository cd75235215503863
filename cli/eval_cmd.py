"""`sidpipe eval`: weight-free quality measures of samples against their reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail


@app.command("eval")
def eval_(
    reference: Annotated[Path, typer.Argument(help="The reference image.", show_default=False)],
    samples: Annotated[Optional[list[Path]], typer.Argument(help="One or more generated images.", show_default=False)] = None,
    *,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write all numbers to this JSON file.")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Write a labelled contact sheet (PNG): reference beside the samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the SWD random projections.")] = 0,
    query_stride: Annotated[int, typer.Option("--query-stride", help="Nearest-patch searches query every s-th patch row/column (1 = all, slower).")] = 2,
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights", help="InceptionV3 state-dict file (torchvision/pytorch-fid key names) to also compute SIFID.")] = None,
    sheet_width: Annotated[int, typer.Option("--sheet-width", help="Maximum contact sheet width in pixels.")] = 1600,
) -> None:
    """Measure samples against their reference: patch SWD, nearest-patch distance per level, coverage,
    copy rate, and (for 2+ samples of one size) diversity. Prints a table."""

    from sidpipe.io.read import load_image
    from sidpipe.io.write import write_bytes_atomic
    from sidpipe.quality import (EvalSettings, check_output_file, contact_sheet, eval_table, evaluate_images,
                                 json_safe, match_channels, png_bytes, sample_label, write_text_atomic)
    from sidpipe.sifid import NOT_AVAILABLE

    samples = list(samples or [])
    try:
        if not samples:
            raise SidpipeError("give at least one SAMPLE image after the REFERENCE")
        if seed < 0:
            raise SidpipeError(f"--seed must be >= 0, got {seed}")
        if query_stride < 1:
            raise SidpipeError(f"--query-stride must be >= 1, got {query_stride}")
        if sheet_width < 200:
            raise SidpipeError(f"--sheet-width must be >= 200, got {sheet_width}")
        if json_out is not None:
            check_output_file(json_out, (".json",), "--json")
        if sheet is not None:
            check_output_file(sheet, (".png",), "--sheet")
        settings = EvalSettings(seed=seed, query_stride=query_stride)
        sifid = None
        if inception_weights is not None:
            from sidpipe.sifid import load_sifid

            sifid = load_sifid(inception_weights)
        images = match_channels([load_image(reference)] + [load_image(p) for p in samples])
        for path, img in zip([reference, *samples], images):
            if min(img.shape[1:]) < max(settings.patch, 11 if sifid else 0):
                raise SidpipeError(f"{path}: {img.shape[2]}x{img.shape[1]} is too small "
                                   f"(at least {settings.patch} px on each side)")
        ref, smps = images[0], images[1:]
        try:
            result = evaluate_images(ref, smps, settings, sifid=sifid)
        except ValueError as exc:  # e.g. an image the metrics cannot take
            raise SidpipeError(str(exc)) from None
    except SidpipeError as exc:
        fail(str(exc))

    names = [p.name for p in samples]
    typer.echo(f"reference: {reference}")
    typer.echo(eval_table(names, result))
    if result["pixel_diversity"] is not None:
        typer.echo(f"pixel diversity (mean per-pixel std, [0,1] scale): {result['pixel_diversity']:.4f}")
        typer.echo(f"mean pairwise distance (RMS, [-1,1] units):       {result['pairwise_distance']:.4f}")
    elif len(samples) >= 2:
        typer.echo("diversity: not computed (the samples differ in size)")
    if sifid is None:
        typer.echo(f"SIFID: {NOT_AVAILABLE}")

    try:
        if json_out is not None:
            doc = {
                "reference": str(reference),
                "settings": settings.to_dict(),
                "samples": [{"file": str(p), **row} for p, row in zip(samples, result["rows"])],
                "mean": result["mean"],
                "pixel_diversity": result["pixel_diversity"],
                "pairwise_distance": result["pairwise_distance"],
                "sifid": result["sifid"] if sifid is None else "computed (per sample)",
            }
            write_text_atomic(json_out, json.dumps(json_safe(doc), indent=2) + "\n")
            typer.echo(f"wrote {json_out}", err=True)
        if sheet is not None:
            labels = [sample_label(n, r) for n, r in zip(names, result["rows"])]
            img = contact_sheet(ref, smps, labels, ref_label=f"reference\n{reference.name}", max_width=sheet_width)
            write_bytes_atomic(sheet, png_bytes(img))
            typer.echo(f"wrote {sheet}", err=True)
    except SidpipeError as exc:
        fail(str(exc))
