"""Slurm worker jobs for one run: a dask-jobqueue SLURMCluster built from `ClusterSettings`.

The driver (`sidpipe run --cluster slurm --jobs N`, on a login node or inside an sbatch allocation)
runs the dask scheduler; each worker job is one dask worker process on a compute node that computes
`tasks_per_job` tiles at once, loads a scale's reference level and index from the run directory once,
and reads/writes the state arrays there. So the run directory must be on a filesystem every node sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .settings import ClusterSettings

JOB_NAME = "sidpipe-worker"


def dashboard_available() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def cluster_kwargs(settings: ClusterSettings, log_dir: Path | None) -> dict:
    """SLURMCluster keyword arguments for `settings` (one worker process per job)."""
    extra = [d for d in settings.directives() if not d.startswith(("-p ", "-A "))]
    return dict(
        cores=settings.tasks_per_job, processes=1, job_cpu=settings.cores, memory=settings.memory,
        walltime=settings.walltime, queue=settings.partition, account=settings.account,
        job_extra_directives=extra, job_script_prologue=list(settings.prologue),
        python=settings.python or sys.executable, interface=settings.interface,
        death_timeout=settings.death_timeout, local_directory=settings.local_directory,
        log_directory=str(log_dir) if log_dir is not None else None, job_name=JOB_NAME,
        scheduler_options={"dashboard_address": settings.dashboard if settings.dashboard and dashboard_available()
                           else None},
    )


def start_cluster(settings: ClusterSettings, log_dir: Path | None = None):
    """A SLURMCluster with no jobs yet (scale it). ConfigError when Slurm's commands are missing or Slurm
    refuses the worker job (`sbatch --test-only`): a job that is never submitted would leave the run
    waiting for workers forever."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--cluster slurm needs Slurm's sbatch on PATH (run sidpipe on a login node or in a job)")
    from dask_jobqueue import SLURMCluster

    if log_dir is not None and any(c.isspace() for c in str(log_dir)):
        log_dir = None  # #SBATCH -o/-e cannot hold a path with spaces: Slurm's default log file instead
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(**cluster_kwargs(settings, log_dir))
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as script:
        script.write(cluster.job_script())
        script.flush()
        res = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        cluster.close()
        why = " ".join(res.stderr.split()) or f"exit {res.returncode}"
        raise ConfigError(f"Slurm refuses the worker job ({why}); check the cluster settings (sidpipe cluster-config)")
    return cluster


def describe(cluster, settings: ClusterSettings, jobs: int) -> str:
    """The lines a job log shows about the cluster: scheduler, dashboard, what each worker job asks for."""
    if settings.dashboard is None:
        dashboard = "off"
    elif not dashboard_available():
        dashboard = "off (pip install bokeh for one)"
    else:
        dashboard = cluster.dashboard_link
    return (f"dask scheduler {cluster.scheduler_address}; dashboard {dashboard}\n"
            f"Slurm: up to {jobs} worker jobs ({JOB_NAME}), each {settings.cores} cores, {settings.memory}, "
            f"walltime {settings.walltime}, {settings.tasks_per_job} tile(s) at once"
            + (f", partition {settings.partition}" if settings.partition else "")
            + (f", account {settings.account}" if settings.account else "")
            + (f", gres {settings.gres}" if settings.gres else ""))
