"""`sidpipe batch` (many inputs as one Slurm array job) and `sidpipe slurm-script` (the script it would submit)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail

MANIFEST_HELP = ("File of inputs, one a line: INPUT, or INPUT<TAB>OUTPUT_NAME (a file name in OUT_DIR; "
                 "EXT added if it has none); # comments; relative paths from the file's folder.")
MANAGED = ("--out", "-o", "--workdir", "--cluster", "--jobs", "--address", "--requeue")


def _prepare(inputs: list[Path] | None, manifest: Path | None, out_dir: Path, ext: str, run: str, preset: str,
             set_: list[str] | None):
    from sidpipe.cluster import load_settings
    from sidpipe.cluster.batch import Batch, plan_tasks, read_manifest
    from sidpipe.config import parse_set, preset_cluster

    overrides = parse_set(set_ or [])
    bad = [k for k in overrides if not k.startswith("cluster.")]
    if bad:
        raise SidpipeError(f"--set {bad[0]}: batch takes cluster.* keys; give run options in --run")
    settings = load_settings(preset_cluster(preset), {k[len("cluster."):]: v for k, v in overrides.items()})
    try:
        run_args = shlex.split(run)
    except ValueError as exc:
        raise SidpipeError(f"--run: {exc}") from None
    managed = [a for a in run_args if a.split("=")[0] in MANAGED]
    if managed:
        raise SidpipeError(f"--run must not contain {managed[0]}: batch sets the output, run directory and requeue")
    if preset != "default":
        run_args = ["--preset", preset, *run_args]
    if not out_dir.is_dir():
        raise SidpipeError(f"--out-dir does not exist: {out_dir}")
    listed = read_manifest(manifest) if manifest is not None else []
    inputs = [*(inputs or []), *(source for source, _ in listed)]
    names = [None] * (len(inputs) - len(listed)) + [name for _, name in listed]
    tasks = plan_tasks(inputs, out_dir, ext, names)
    return Batch(out_dir), tasks, settings, run_args


@app.command("batch")
def batch(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Reference images; one output each.",
                                                           show_default=False)] = None,
    *,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder of the outputs (OUT_DIR/STEM.EXT).")],
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help=MANIFEST_HELP)] = None,
    ext: Annotated[str, typer.Option(help="Output type of every task.")] = ".tif",
    run: Annotated[str, typer.Option("--run", help="Options of each task's `sidpipe run`, e.g. \"--size 8000x6000 "
                                     "--seed 1\".")] = "",
    preset: Annotated[str, typer.Option(help="Preset of the runs (its cluster: section applies too).")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="cluster.KEY=VALUE for the array tasks "
                                                       "(repeatable).")] = None,
    array_throttle: Annotated[Optional[int], typer.Option("--array-throttle", help="At most K tasks at once.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the array to end, then print the summary "
                                       "(exit 1 unless every input is done).")] = False,
) -> None:
    """Submit one Slurm array job, one resumable `sidpipe run` per input whose output is missing."""
    try:
        if array_throttle is not None and array_throttle < 1:
            raise SidpipeError("--array-throttle must be >= 1")
        state, tasks, settings, run_args = _prepare(inputs, manifest, out_dir, ext, run, preset, set_)
        status = state.status(tasks)
        todo = [t for t in tasks if status[t] not in ("done",) and not status[t].startswith(("pending", "running"))]
        done = sum(s == "done" for s in status.values())
        typer.echo(f"batch: {len(tasks)} inputs -> {state.out_dir}: {done} done, "
                   f"{len(tasks) - done - len(todo)} pending or running, {len(todo)} to submit")
        job = None
        if todo:
            tasks_file, text = state.prepare(todo, settings, run_args, array_throttle)
            job = state.submit(tasks_file, text)
            typer.echo(f"submitted array job {job} ({len(todo)} tasks"
                       + (f", at most {array_throttle} at once" if array_throttle else "")
                       + f"): {', '.join(t.input.name for t in todo)}; logs in {state.logs}")
        if not wait:
            return
        for j in {job} | {s.split("(")[1].split("_")[0] for s in status.values() if "(" in s and "log" not in s}:
            if j:
                state.wait(j)
        status = state.status(tasks)
        for task in tasks:
            typer.echo(f"  {task.input.name} -> {task.output.name}: {status[task]}")
        finished = sum(s == "done" for s in status.values())
        typer.echo(f"{finished}/{len(tasks)} done")
        if finished < len(tasks):
            raise typer.Exit(code=1)
    except SidpipeError as exc:
        fail(str(exc))


@app.command("slurm-script")
def slurm_script(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Reference images; one output each.",
                                                           show_default=False)] = None,
    *,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder of the outputs (OUT_DIR/STEM.EXT).")],
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help=MANIFEST_HELP)] = None,
    ext: Annotated[str, typer.Option(help="Output type of every task.")] = ".tif",
    run: Annotated[str, typer.Option("--run", help="Options of each task's `sidpipe run`.")] = "",
    preset: Annotated[str, typer.Option(help="Preset of the runs (its cluster: section applies too).")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="cluster.KEY=VALUE (repeatable).")] = None,
    array_throttle: Annotated[Optional[int], typer.Option("--array-throttle", help="At most K tasks at once.")] = None,
) -> None:
    """Print the sbatch script `sidpipe batch` would submit for these inputs (all of them), without submitting."""
    from sidpipe.cluster.batch import script

    try:
        state, tasks, settings, run_args = _prepare(inputs, manifest, out_dir, ext, run, preset, set_)
        listing = state.state / "tasks-N.tsv"
        typer.echo(f"# task list {listing} (written by sidpipe batch), line i = array task i:")
        for i, t in enumerate(tasks):
            typer.echo(f"#   {i}: {t.input}\t{t.output}")
        typer.echo(script(str(listing), len(tasks), settings, run_args, state.logs, array_throttle), nl=False)
    except SidpipeError as exc:
        fail(str(exc))


@app.command("cluster-config")
def cluster_config(
    shipped: Annotated[bool, typer.Option("--shipped", help="Print the shipped defaults file, comments included "
                                          "(a starting point for ~/.config/sidpipe/slurm.yaml).")] = False,
    preset: Annotated[str, typer.Option(help="Preset whose cluster: section applies.")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="cluster.KEY=VALUE (repeatable).")] = None,
) -> None:
    """The Slurm settings `--cluster slurm` and `batch` would use, and the files they came from."""
    import dataclasses
    from importlib import resources

    import yaml

    from sidpipe.cluster import load_settings
    from sidpipe.cluster.settings import DEFAULTS, site_file, user_file
    from sidpipe.config import parse_set, preset_cluster

    try:
        if shipped:
            typer.echo(resources.files(DEFAULTS[0]).joinpath(DEFAULTS[1]).read_text(), nl=False)
            return
        overrides = parse_set(set_ or [])
        bad = [k for k in overrides if not k.startswith("cluster.")]
        if bad:
            raise SidpipeError(f"--set {bad[0]}: only cluster.* keys here")
        settings = load_settings(preset_cluster(preset), {k[len("cluster."):]: v for k, v in overrides.items()})
        values = {k: v for k, v in dataclasses.asdict(settings).items() if k != "sources"}
        typer.echo(f"# site file {site_file()}, user file {user_file()}")
        typer.echo(f"# from: {'; '.join(settings.sources)}")
        typer.echo(yaml.safe_dump(values, sort_keys=False), nl=False)
    except SidpipeError as exc:
        fail(str(exc))
