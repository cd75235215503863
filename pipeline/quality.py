"""Quality reports around `sidpipe.metrics`: contact sheets, tables, and the `bench quality` run.

Used by `sidpipe eval` and `sidpipe bench quality`. Every file is written
atomically (a hidden temporary file in the same folder, then os.replace), and a
bench report directory appears only when it is complete.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from . import metrics as M
from .errors import ConfigError, ImageError, SidpipeError
from .io.write import write_bytes_atomic
from .sifid import NOT_AVAILABLE as SIFID_NOTE

# Per-sample metrics: (key in a sample row, short column label, long description).
SAMPLE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("swd", "SWD", "patch sliced Wasserstein distance (7x7 patches, mean over 3 levels)"),
    ("nn_l0", "NN L0", "nearest-patch distance, sample -> reference, full resolution"),
    ("nn_l1", "NN L1", "nearest-patch distance at 1/2 resolution"),
    ("nn_l2", "NN L2", "nearest-patch distance at 1/4 resolution"),
    ("coverage", "coverage", "nearest-patch distance, reference -> sample (missing content)"),
    ("copy_rate", "copy", "fraction of pixels in large verbatim translated copies of the reference"),
)
# Per-set metrics (one value for the K samples of one reference).
SET_METRICS: tuple[tuple[str, str, str], ...] = (
    ("pixel_diversity", "pix div", "mean per-pixel std across the K samples ([0, 1] scale)"),
    ("pairwise_distance", "pair dist", "mean RMS distance between two samples ([-1, 1] units)"),
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class EvalSettings:
    """How the metrics are computed (recorded in every JSON and report)."""

    patch: int = 7
    levels: int = 3
    projections: int = 128
    seed: int = 0
    query_stride: int = 2

    def to_dict(self) -> dict:
        return {"patch": self.patch, "levels": self.levels, "projections": self.projections,
                "seed": self.seed, "query_stride": self.query_stride}


# --------------------------------------------------------------------------- atomic files


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def png_bytes(image) -> bytes:
    """PNG encoding of a PIL image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def check_output_file(path: Path, suffixes: Sequence[str], what: str) -> None:
    """Refuse an output path that cannot be written, before any heavy work."""
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if path.is_dir():
        raise ConfigError(f"{what} is a folder: {path}")
    check_parent_writable(path, what)


def check_parent_writable(path: Path, what: str) -> None:
    """Refuse a path whose folder is missing or not writable (`what` names the option in the message)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{what}: folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what}: folder is not writable: {parent}")


def json_safe(obj):
    """Replace inf/nan floats (not valid JSON) by strings, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- images


def match_channels(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Gray images are repeated to RGB when any image is RGB (so a gray sample can be compared)."""
    rgb = any(x.shape[0] == 3 for x in images)
    return [np.repeat(x, 3, axis=0) if rgb and x.shape[0] == 1 else x for x in images]


def to_pil(img: np.ndarray):
    """(C, H, W) [-1, 1] -> PIL RGB image (8-bit)."""
    from PIL import Image

    x = np.asarray(img, dtype=np.float32)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    q = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(q.transpose(1, 2, 0)), mode="RGB")


def contact_sheet(
    reference: np.ndarray,
    samples: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    ref_label: str = "reference",
    title: str | None = None,
    max_width: int = 1600,
    max_cols: int = 6,
):
    """A labelled grid: the reference in the first cell, then the samples.

    All cells have the same size; images are scaled down (never up) to fit
    ``max_cols`` cells in ``max_width`` pixels, keeping their aspect ratio.
    Labels (may hold several lines) are drawn under each image with PIL's
    default font. Returns a PIL RGB image.
    """
    from PIL import Image, ImageDraw, ImageFont

    pics = [to_pil(reference)] + [to_pil(s) for s in samples]
    texts = [ref_label] + list(labels)
    pad = 8
    cols = max(1, min(max_cols, len(pics)))
    rows = math.ceil(len(pics) / cols)
    img_w = max(p.width for p in pics)
    img_h = max(p.height for p in pics)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_h(text: str) -> int:
        box = probe.multiline_textbbox((0, 0), text, font=font, spacing=2)
        return box[3] - box[1]

    def text_w(text: str) -> int:
        box = probe.multiline_textbbox((0, 0), text, font=font, spacing=2)
        return box[2] - box[0]

    room = max(32, (max_width - pad * (cols + 1)) // cols)
    # Scale down to fit the width; tiny images are enlarged by an integer factor (pixels stay sharp).
    up = max(1, min(128 // img_w, room // img_w)) if img_w < 128 else 1
    scale = min(float(up), room / img_w)
    cell_h = max(1, round(img_h * scale))
    cell_w = max(round(img_w * scale), min(room, max(text_w(t) for t in texts) + 4))

    label_h = max(text_h(t) for t in texts) + 6
    title_h = text_h(title) + 2 * pad if title else 0
    width = cols * cell_w + (cols + 1) * pad
    height = title_h + rows * (cell_h + label_h) + (rows + 1) * pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.multiline_text((pad, pad), title, fill="black", font=font, spacing=2)
    for i, (pic, text) in enumerate(zip(pics, texts)):
        r, c = divmod(i, cols)
        x0 = pad + c * (cell_w + pad)
        y0 = title_h + pad + r * (cell_h + label_h + pad)
        if scale != 1.0:
            size = (max(1, round(pic.width * scale)), max(1, round(pic.height * scale)))
            pic = pic.resize(size, Image.LANCZOS if scale < 1.0 else Image.NEAREST)
        sheet.paste(pic, (x0, y0))
        if i == 0:  # frame the reference
            draw.rectangle([x0 - 2, y0 - 2, x0 + pic.width + 1, y0 + pic.height + 1], outline=(200, 0, 0), width=2)
        draw.multiline_text((x0, y0 + cell_h + 3), text, fill="black", font=font, spacing=2)
    return sheet


# --------------------------------------------------------------------------- evaluation


def sample_rows(result: dict) -> list[dict]:
    """Per-sample rows {swd, nn_l0, nn_l1, nn_l2, coverage, copy_rate} from `metrics.evaluate`'s output."""
    rows = []
    for i in range(result["n_samples"]):
        row = {"swd": result["swd"][i], "coverage": result["coverage"][i], "copy_rate": result["copy_rate"][i]}
        levels = result["nn_levels"][i]
        for lvl in range(3):
            row[f"nn_l{lvl}"] = levels[lvl] if lvl < len(levels) else None
        rows.append(row)
    return rows


def evaluate_images(reference: np.ndarray, samples: Sequence[np.ndarray], settings: EvalSettings,
                    sifid=None) -> dict:
    """`metrics.evaluate` plus per-sample rows, their means, and SIFID (or why it is missing)."""
    result = M.evaluate(reference, list(samples), patch=settings.patch, seed=settings.seed,
                        query_stride=settings.query_stride, levels=settings.levels,
                        projections=settings.projections)
    rows = sample_rows(result)
    if sifid is not None:
        for row, smp in zip(rows, samples):
            row["sifid"] = sifid(smp, reference)
    mean = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if r[key] is not None]
        mean[key] = float(np.mean(vals)) if vals else None
    return {
        "rows": rows,
        "mean": mean,
        "pixel_diversity": result.get("pixel_diversity"),
        "pairwise_distance": result.get("pairwise_distance"),
        "sifid": "computed" if sifid is not None else SIFID_NOTE,
    }


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table with aligned columns (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def eval_table(names: Sequence[str], evaluated: dict) -> str:
    """The `sidpipe eval` table: one row per sample and a mean row."""
    keys = [k for k, _, _ in SAMPLE_METRICS] + (["sifid"] if "sifid" in evaluated["rows"][0] else [])
    labels = {k: lab for k, lab, _ in SAMPLE_METRICS} | {"sifid": "SIFID"}
    headers = ["sample"] + [labels[k] for k in keys]
    body = [[n] + [_fmt(r[k]) for k in keys] for n, r in zip(names, evaluated["rows"])]
    body.append(["mean"] + [_fmt(evaluated["mean"][k]) for k in keys])
    return format_table(headers, body)


def sample_label(name: str, row: dict) -> str:
    return f"{name}\nSWD {row['swd']:.3f}  NN {row['nn_l0']:.3f}\ncopy {row['copy_rate']:.2f}"


# --------------------------------------------------------------------------- bench quality


def list_references(folder: Path) -> list[Path]:
    if not folder.exists():
        raise ImageError(f"reference folder not found: {folder}")
    if not folder.is_dir():
        raise ImageError(f"not a folder: {folder}")
    refs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))
    if not refs:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return refs


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def _pm(pair: tuple[float | None, float | None], digits: int = 4) -> str:
    m, s = pair
    if m is None:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def build_dir_for(out_dir: Path) -> Path:
    """The hidden folder a report is built in (next to REPORT_DIR); it is kept when a run is interrupted."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    return parent / f".{out_dir.name}.part"


def _prepare_out_dir(out_dir: Path, state: dict, resume: bool) -> tuple[Path, bool]:
    """Check REPORT_DIR can be (re)placed; return (build folder, resumed?)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"--out exists and is not a folder: {out_dir}")
        if any(out_dir.iterdir()) and not (out_dir / "results.json").is_file():
            raise ConfigError(f"--out folder is not empty and is not a sidpipe report (no results.json): {out_dir}")
    check_parent_writable(out_dir, "--out")
    build = build_dir_for(out_dir)
    if build.exists():
        if not resume:
            raise ConfigError(f"an unfinished run is in {build}: add --resume to continue it, or delete that folder")
        try:
            old = json.loads((build / "state.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"cannot resume: {build}/state.json is missing or unreadable") from None
        if old != state:
            diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
            raise ConfigError(f"cannot resume {build}: it was started with a different {', '.join(diff)}")
        return build, True
    build.mkdir()
    for sub in ("samples", "sheets", "images"):
        (build / sub).mkdir()
    write_text_atomic(build / "state.json", json.dumps(state, indent=2) + "\n")
    return build, False


def _publish(build: Path, out_dir: Path) -> None:
    """Move the finished build folder into place (an older report there is replaced)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(out_dir, old)
    os.replace(build, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def quantise8(img: np.ndarray) -> np.ndarray:
    """The image as an 8-bit file holds it (what `save_image` writes and `load_image` reads back)."""
    q = np.round((np.clip(np.asarray(img, np.float64), -1.0, 1.0) + 1.0) * 127.5)
    return (q / 127.5 - 1.0).astype(np.float32)


def bench_quality(
    references: Sequence[Path],
    cfg,
    out_dir: Path,
    samples: int,
    *,
    settings: EvalSettings = EvalSettings(),
    preset: str = "default",
    command: str = "",
    resume: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Generate `samples` images per reference with `cfg` (seeds cfg.seed .. cfg.seed + K - 1), evaluate
    them and write report.md, results.json, per_image.png, sheets/ and samples/ into `out_dir`.

    The report is built in a hidden folder next to `out_dir` (see :func:`build_dir_for`) that is moved
    into place when every image is done. After each image its numbers are saved there and report.md /
    results.json are rewritten (marked partial), so an interrupted run leaves a readable partial report;
    ``resume=True`` continues it (same images, config and settings), skipping finished images.
    Metrics are computed on the samples as saved (8-bit), i.e. what `sidpipe eval` on the files gives.
    """
    from . import runner
    from .io.read import load_image
    from .io.write import save_image

    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    cfg = cfg.replace(samples=samples)
    # Read and plan every reference first: bad input fails before hours of work.
    loaded = []
    for path in references:
        ref = load_image(path)
        try:
            plan = runner.make_plan(cfg, tuple(ref.shape[-2:]))
        except SidpipeError as exc:
            raise type(exc)(f"{path.name}: {exc}") from None
        if min(ref.shape[-2:]) < settings.patch:
            raise ImageError(f"{path.name}: smaller than the metric patch {settings.patch}")
        loaded.append((path, ref, plan))
    stems = [p.stem for p, _, _ in loaded]
    if len(set(stems)) != len(stems):
        raise ImageError("two references share a file name stem; rename one (outputs are named by stem)")

    state = {"references": [str(p.resolve()) for p in references], "config": json_safe(cfg.to_dict()),
             "eval": settings.to_dict(), "preset": preset}
    build, resumed = _prepare_out_dir(out_dir, state, resume)
    log(f"{len(loaded)} reference(s), {samples} sample(s) each -> {out_dir} (building in {build})")
    meta = {"sidpipe_version": __version__, "git": _git_state(), "command": command, "preset": preset,
            "config": state["config"], "seeds": list(range(cfg.seed, cfg.seed + samples)),
            "samples_per_image": samples, "eval": settings.to_dict(), "sifid": SIFID_NOTE}
    started = time.perf_counter()
    images_out: list[dict] = []
    n = len(loaded)
    fresh = 0
    try:
        for i, (path, ref, plan) in enumerate(loaded):
            record = build / "images" / f"{path.stem}.json"
            if resumed and record.is_file():
                images_out.append(json.loads(record.read_text()))
                log(f"[{i + 1}/{n}] {path.name}: already done (resumed)")
                continue
            t0 = time.perf_counter()
            log(f"[{i + 1}/{n}] {path.name}: generating {samples} sample(s), {plan.num_scales} scales")
            last = [0, t0]

            def on_step(info: dict) -> None:
                if info.get("event") == "step" and info["sample"] != last[0]:
                    now = time.perf_counter()
                    log(f"    sample {last[0] + 1}/{samples} done ({now - last[1]:.1f} s)")
                    last[0], last[1] = info["sample"], now

            outs = runner.generate(ref, cfg, plan=plan, progress=on_step)
            t_gen = time.perf_counter() - t0
            log(f"    sample {samples}/{samples} done ({time.perf_counter() - last[1]:.1f} s)")
            outs = [quantise8(x) for x in outs]
            files = []
            for k, img in enumerate(outs):
                name = f"{path.stem}_s{cfg.seed + k}.png"
                save_image(build / "samples" / name, img)
                files.append(f"samples/{name}")
            t1 = time.perf_counter()
            ev = evaluate_images(ref, outs, settings)
            t_eval = time.perf_counter() - t1
            labels = [sample_label(f"seed {cfg.seed + k}", r) for k, r in enumerate(ev["rows"])]
            sheet = contact_sheet(ref, outs, labels, ref_label=f"reference\n{path.name}",
                                  title=f"{path.name}: {samples} samples, preset {preset}")
            sheet_name = f"sheets/{path.stem}.png"
            write_bytes_atomic(build / sheet_name, png_bytes(sheet))
            entry = {
                "name": path.stem, "file": str(path), "size": [int(ref.shape[2]), int(ref.shape[1])],
                "plan": plan.describe(), "samples": files, "sheet": sheet_name,
                "seconds_per_sample": t_gen / samples, "eval_seconds": t_eval,
                "rows": ev["rows"], "mean": ev["mean"],
                "std": {k: _mean_std([r[k] for r in ev["rows"]])[1] for k in ev["rows"][0]},
                "pixel_diversity": ev["pixel_diversity"], "pairwise_distance": ev["pairwise_distance"],
            }
            write_text_atomic(record, json.dumps(json_safe(entry), indent=2) + "\n")
            images_out.append(entry)
            fresh += 1
            _write_report(build, meta, images_out, n, time.perf_counter() - started)
            done = time.perf_counter() - started
            left = sum(1 for p, _, _ in loaded[i + 1:] if not (build / "images" / f"{p.stem}.json").is_file())
            eta = done / fresh * left
            log(f"[{i + 1}/{n}] {path.name}: done in {time.perf_counter() - t0:.1f} s "
                f"(generate {t_gen:.1f} s, evaluate {t_eval:.1f} s); elapsed {_fmt_seconds(done)}, "
                f"ETA {_fmt_seconds(eta)}")
        results = _write_report(build, meta, images_out, n, time.perf_counter() - started)
        _publish(build, out_dir)
    except BaseException:
        if images_out:
            log(f"stopped after {len(images_out)}/{n} images; partial report: {build / 'report.md'}; "
                f"continue with --resume")
        elif not resumed:
            shutil.rmtree(build, ignore_errors=True)
        raise
    return results


def _write_report(build: Path, meta: dict, images: list[dict], total: int, seconds: float) -> dict:
    results = dict(meta)
    results.update({"partial": len(images) < total, "images_done": len(images), "images_total": total,
                    "total_seconds": seconds, "summary": summarize(images), "images": images})
    write_text_atomic(build / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    write_bytes_atomic(build / "per_image.png", plot_per_image(images))
    write_text_atomic(build / "report.md", report_markdown(results))
    return results


def _git_state() -> str:
    """`git describe --always --dirty` of the source tree, or "unknown" (recorded for reproducibility)."""
    import subprocess

    try:
        res = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _all_metric_keys() -> list[tuple[str, str, str]]:
    return list(SAMPLE_METRICS) + list(SET_METRICS) + [("seconds_per_sample", "s/sample", "generation seconds per sample")]


def _image_value(img: dict, key: str):
    if key in img["mean"]:
        return img["mean"][key]
    return img.get(key)


def summarize(images: Sequence[dict]) -> dict:
    """Per metric: mean, std (over images, of the per-image value), min, max."""
    out = {}
    for key, _, _ in _all_metric_keys():
        vals = [v for v in (_image_value(im, key) for im in images) if v is not None]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                        "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}
        else:
            out[key] = None
    return out


def report_markdown(results: dict) -> str:
    images = results["images"]
    k = results["samples_per_image"]
    cfg = results["config"]
    ev = results["eval"]
    lines = [
        "# sidpipe quality report",
        "",
        *([f"**PARTIAL: {results['images_done']} of {results['images_total']} images done.**", ""]
          if results.get("partial") else []),
        f"- {len(images)} reference images, K = {k} samples each (seeds {results['seeds'][0]}..{results['seeds'][-1]}), "
        f"preset `{results['preset']}`, sidpipe {results['sidpipe_version']} (git {results.get('git', 'unknown')})",
        f"- command: `{results['command']}`" if results["command"] else "- command: (library call)",
        f"- time {_fmt_seconds(results['total_seconds'])} (this session; per-image seconds below)",
        f"- metrics: {ev['patch']}x{ev['patch']} patches, {ev['levels']} pyramid levels, {ev['projections']} SWD "
        f"projections (seed {ev['seed']}), nearest-patch query stride {ev['query_stride']}; SIFID {results['sifid']}",
        "",
        "## Summary",
        "",
        "Mean ± std over the images of the per-image value (per-sample metrics: the mean over that image's K samples; "
        "diversity: one value per image). Lower is closer to the reference for SWD, NN and coverage; "
        "copy rate 1 = a verbatim copy, 0 = no large copied region.",
        "",
        "| metric | mean ± std | min | max | what |",
        "|---|---|---|---|---|",
    ]
    for key, label, what in _all_metric_keys():
        s = results["summary"].get(key)
        if s is None:
            lines.append(f"| {label} | - | - | - | {what} |")
            continue
        d = 2 if key == "seconds_per_sample" else 4
        lines.append(f"| {label} | {s['mean']:.{d}f} ± {s['std']:.{d}f} | {s['min']:.{d}f} | {s['max']:.{d}f} | {what} |")
    lines += ["", "## Per image", "", "Per-sample metrics: mean ± std over the K samples.", ""]
    heads = [lab for _, lab, _ in SAMPLE_METRICS] + [lab for _, lab, _ in SET_METRICS] + ["s/sample"]
    lines.append("| image | size | " + " | ".join(heads) + " |")
    lines.append("|---|---|" + "---|" * len(heads))
    for im in images:
        cells = [_pm((im["mean"][key], im["std"][key])) for key, _, _ in SAMPLE_METRICS]
        cells += [_fmt(im[key]) for key, _, _ in SET_METRICS]
        cells.append(f"{im['seconds_per_sample']:.1f}")
        lines.append(f"| [{im['name']}]({im['sheet']}) | {im['size'][0]}x{im['size'][1]} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-image values", "", "![per-image metric values](per_image.png)", "",
              "## Contact sheets", ""]
    for im in images:
        lines.append(f"### {im['name']}")
        lines.append("")
        lines.append(f"![{im['name']}]({im['sheet']})")
        lines.append("")
    lines += ["## Resolved configuration", "", "| key | value |", "|---|---|"]
    for key, value in cfg.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "Compare two configurations by running `sidpipe bench quality` twice with different "
              "`--preset`/`--set` and `--out`, then reading the two Summary tables (or `results.json` "
              "`summary`) side by side; see docs/quality.md.", ""]
    return "\n".join(lines)


def plot_per_image(images: Sequence[dict]) -> bytes:
    """PNG bytes: one panel per metric, per-image mean (dot) ± std over samples (bar), individual samples (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(SAMPLE_METRICS) + list(SET_METRICS)
    ncols = 4
    nrows = math.ceil(len(keys) / ncols)
    names = [im["name"] for im in images]
    x = np.arange(len(images))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (key, label, _) in zip(axes.flat, keys):
        if key in images[0]["mean"]:
            for i, im in enumerate(images):
                vals = [r[key] for r in im["rows"] if r[key] is not None]
                ax.plot([i] * len(vals), vals, "x", color="0.6", ms=4)
            means = [im["mean"][key] if im["mean"][key] is not None else np.nan for im in images]
            stds = [im["std"][key] if im["std"][key] is not None else np.nan for im in images]
            ax.errorbar(x, means, yerr=stds, fmt="o", color="C0", ms=4, capsize=2)
        else:
            vals = [im[key] if im[key] is not None else np.nan for im in images]
            ax.plot(x, vals, "o", color="C1", ms=4)
        ax.set_title(label, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=70, fontsize=7, ha="right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
