"""`sidpipe batch`: many inputs as one Slurm array job, one resumable `sidpipe run` per input.

    OUT_DIR/
        NAME.tif                  one output per input (named from the input's stem), written atomically
        NAME.tif.sidpipe/         the run directory of an unfinished task (resumed by the next attempt)
        .sidpipe-batch/
            submissions.tsv       job id <TAB> task list, one line per `sidpipe batch` that submitted
            tasks-JOBID.tsv       input <TAB> output, line i = array task i
            batch-N.sbatch        the script submitted
            logs/JOBID_TASK.out   each task's log (progress lines with ETA)

A task is finished when its output exists. Running `sidpipe batch` again submits only the inputs whose
output is missing and that no pending or running task of an earlier submission is working on; a
resubmitted task resumes from its run directory. Each task asks for a USR1 `requeue_signal_seconds`
before its walltime: it then checkpoints (finished tiles are on disk) and requeues itself.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dask.utils import parse_bytes

from ..errors import ConfigError, SidpipeError
from .settings import ClusterSettings

JOB_NAME = "sidpipe-batch"
STATE = ".sidpipe-batch"


@dataclass(frozen=True)
class Task:
    input: Path
    output: Path


def read_manifest(path: Path) -> list[tuple[Path, str | None]]:
    """(input, output name or None) per line of a manifest: `INPUT` or `INPUT<TAB>OUTPUT_NAME`; blank lines
    and lines starting with # are skipped; a relative INPUT is relative to the manifest's folder."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        source, _, name = line.partition("\t")
        source, name = source.strip(), name.strip()
        if not source or "\t" in name:
            raise ConfigError(f"{path} line {number}: expected INPUT or INPUT<TAB>OUTPUT_NAME")
        entries.append((path.parent / Path(source).expanduser(), name or None))
    return entries


def plan_tasks(inputs: list[Path], out_dir: Path, ext: str, names: list[str | None] | None = None) -> list[Task]:
    """One task per input, output OUT_DIR/STEM.EXT, or OUT_DIR/NAME for a given name (NAME.EXT if NAME has
    no extension); refuses missing inputs, names with a folder and clashing output names."""
    if not ext.startswith("."):
        ext = "." + ext
    tasks, seen = [], {}
    for path, name in zip(inputs, names or [None] * len(inputs)):
        if not path.is_file():
            raise ConfigError(f"input not found: {path}")
        if name is not None and (Path(name).name != name or name in (".", "..")):
            raise ConfigError(f"output name {name!r} of {path} must be a file name in --out-dir, without a folder")
        if name is None:
            name = f"{path.stem}{ext}"
        elif not Path(name).suffix:
            name += ext
        out = out_dir.resolve() / name
        if out in seen:
            raise ConfigError(f"{seen[out]} and {path} would both write {out.name}; rename one")
        seen[out] = path
        tasks.append(Task(path.resolve(), out))
    if not tasks:
        raise ConfigError("no inputs")
    return tasks


def script(tasks_file: str, count: int, settings: ClusterSettings, run_args: list[str], log_dir: Path,
           throttle: int | None) -> str:
    """The sbatch script of an array of `count` tasks listed in `tasks_file` (line i = task i)."""
    python = settings.python or sys.executable
    lines = ["#!/bin/bash",
             f"#SBATCH -J {JOB_NAME}",
             f"#SBATCH --array=0-{count - 1}" + (f"%{throttle}" if throttle else ""),
             f"#SBATCH -o {log_dir}/%A_%a.out",
             "#SBATCH --open-mode=append",
             f"#SBATCH -t {settings.walltime}",
             f"#SBATCH -c {settings.cores}",
             f"#SBATCH --mem={parse_bytes(settings.memory) // 2**20}M",
             "#SBATCH --requeue"]
    if settings.requeue_signal_seconds:
        lines.append(f"#SBATCH --signal=B:USR1@{settings.requeue_signal_seconds}")
    lines += [f"#SBATCH {d}" for d in settings.directives()]
    lines += ["",
              f"# settings from: {'; '.join(settings.sources)}",
              "set -eu", *settings.prologue,
              'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
              f'LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(tasks_file)})',
              "INPUT=${LINE%%$'\\t'*}",
              "OUTPUT=${LINE#*$'\\t'}",
              'echo "sidpipe batch task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}) '
              'on $(hostname): $INPUT -> $OUTPUT"',
              # exec: USR1 (B:) and SIGTERM reach sidpipe itself, which checkpoints (and on USR1 requeues)
              f'exec {shlex.quote(python)} -m sidpipe.cli run "$INPUT" --out "$OUTPUT" --workdir "$OUTPUT.sidpipe" '
              f"--requeue {shlex.join(run_args)}".rstrip(),
              ""]
    return "\n".join(lines)


class Batch:
    """The state of one output folder's batch (see the module docstring)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir.resolve()
        self.state = self.out_dir / STATE
        self.logs = self.state / "logs"

    def submissions(self) -> list[tuple[str, Path]]:
        path = self.state / "submissions.tsv"
        if not path.exists():
            return []
        return [(job, Path(tasks)) for job, tasks in (line.split("\t") for line in path.read_text().splitlines() if line)]

    def in_flight(self) -> dict[Path, str]:
        """Outputs a pending or running array task works on -> 'JOBID_TASK STATE'."""
        found: dict[Path, str] = {}
        for job, tasks_file in self.submissions():
            res = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K %T"], capture_output=True, text=True)
            if res.returncode != 0 or not tasks_file.exists():
                continue  # the job is no longer known to Slurm: nothing of it is in flight
            listed = tasks_file.read_text().splitlines()
            for line in res.stdout.splitlines():
                index, state = line.split()
                if index.isdigit() and int(index) < len(listed):
                    found[Path(listed[int(index)].split("\t")[1])] = f"{job}_{index} {state}"
        return found

    def last_log(self, task: Task) -> Path | None:
        """The log of the latest attempt at `task`, if any."""
        for job, tasks_file in reversed(self.submissions()):
            if tasks_file.exists():
                listed = [Path(line.split("\t")[1]) for line in tasks_file.read_text().splitlines()]
                if task.output in listed:
                    log = self.logs / f"{job}_{listed.index(task.output)}.out"
                    return log if log.exists() else None
        return None

    def status(self, tasks: list[Task]) -> dict[Task, str]:
        """done | pending/running (JOBID_TASK) | failed or stopped (LOG) | not submitted."""
        flying = self.in_flight()
        out = {}
        for task in tasks:
            if task.output.exists():
                out[task] = "done"
            elif task.output in flying:
                out[task] = flying[task.output].split()[1].lower() + f" ({flying[task.output].split()[0]})"
            else:
                log = self.last_log(task)
                out[task] = f"unfinished (log {log})" if log else "not submitted"
        return out

    def prepare(self, todo: list[Task], settings: ClusterSettings, run_args: list[str],
                throttle: int | None) -> tuple[Path, str]:
        """Write the task list and script for `todo`; returns (tasks file, script text)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        n = len(self.submissions())
        tasks_file = self.state / f"tasks-{n}.tsv"
        tasks_file.write_text("".join(f"{t.input}\t{t.output}\n" for t in todo))
        return tasks_file, script(str(tasks_file), len(todo), settings, run_args, self.logs, throttle)

    def submit(self, tasks_file: Path, text: str) -> str:
        """sbatch the script; records the submission; returns the array job id."""
        path = tasks_file.with_name(tasks_file.stem.replace("tasks", "batch") + ".sbatch")
        path.write_text(text)
        try:
            res = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise ConfigError("sidpipe batch needs Slurm's sbatch on PATH (run it on a login node)") from None
        if res.returncode != 0:
            raise SidpipeError(f"sbatch refused the array job: {res.stderr.strip() or res.returncode}")
        job = res.stdout.strip().split(";")[0]
        with open(self.state / "submissions.tsv", "a") as f:
            f.write(f"{job}\t{tasks_file}\n")
        return job

    def wait(self, job: str, poll: float = 2.0) -> None:
        """Until no task of array job `job` is pending or running."""
        while True:
            res = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K"], capture_output=True, text=True)
            if res.returncode != 0 or not res.stdout.strip():
                return
            time.sleep(poll)
