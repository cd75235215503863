"""The run directory of an out-of-core run: manifest, reference pyramid, sampler state, indexes, markers.

    <out>.sidpipe/
        manifest.json     what is being computed (config, input fingerprint, plan) and with which versions
        ref.zarr/         the reference at every scale (OME-Zarr 0.5 multiscales, float32 in [-1, 1])
        state.zarr/       per scale s: x0 / x1 (x_t double-buffered by step parity) and xhat (the estimate)
        index-s{s}.faiss  the IVF index of scale s (+ .json sidecar)
        markers/          NAME.done when a stage is complete; NAME/ holds one file per finished tile meanwhile
        lock              held (fcntl.flock) by the one process driving the run

Every write is atomic (zarr's local store writes chunks to a temp file and renames; markers and the
manifest likewise), so a run killed at any moment resumes from its markers: a tile whose marker is
missing is simply computed again.

One run directory has one writer: `RunDir.open` takes an exclusive `flock` on `lock` and keeps it until
`close` (or the process's death: the kernel drops the lock with its holder, so a killed run never blocks
the next one). A second driver on a live run directory (a requeued job overlapping the one it replaces,
two array tasks with the same output) is refused. Workers of the run (threads, processes, dask workers)
read and write the arrays without the lock: the driver schedules them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import zarr

from .errors import ConfigError
from .io.write import write_bytes_atomic

FINGERPRINT_BLOCK = 1 << 20
LOCK_NAME = "lock"


def fingerprint(path: Path) -> dict[str, Any]:
    """Identify an input file cheaply even when it is huge: size and a hash of its first, middle and last MiB."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
            f.seek(offset)
            h.update(f.read(FINGERPRINT_BLOCK))
    return {"name": path.name, "size": size, "blake2b": h.hexdigest()}


class RunDir:
    """One run's folder. `open` creates it or checks that it belongs to the same job before resuming."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.markers = self.path / "markers"
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the run directory's exclusive lock (creating the folder), or refuse: another process drives it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(f"{self.path} is in use by another sidpipe run ({holder or 'pid unknown'}); "
                                  "wait for it to end, or use another --workdir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def open(cls, path: Path, identity: dict[str, Any], extra: dict[str, Any], *, overwrite: bool) -> RunDir:
        """Create the run directory, or reopen it if its manifest has the same `identity`.

        Args:
            identity: what decides the result (config, input fingerprint, output size); a different
                identity in an existing directory is refused unless `overwrite`.
            extra: recorded, not compared (versions, layout).
        """
        run = cls(path)
        foreign = run.path.exists() and (not run.path.is_dir() or (
            not (run.path / "manifest.json").exists() and any(p.name != LOCK_NAME for p in run.path.iterdir())))
        if foreign and not (overwrite and run.path.is_dir()):  # checked before the lock file is made in it
            raise ConfigError(f"{run.path} exists and is not a sidpipe run directory; use --overwrite or another --workdir")
        run.lock()
        try:
            return run._open(identity, extra, overwrite=overwrite)
        except BaseException:
            run.close()
            raise

    def _open(self, identity: dict[str, Any], extra: dict[str, Any], *, overwrite: bool) -> RunDir:
        run = self
        manifest = run.path / "manifest.json"
        if overwrite:  # everything but the lock we hold
            for entry in run.path.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if manifest.exists():
            old = json.loads(manifest.read_text())
            diff = sorted(k for k in set(old["identity"]) | set(identity)
                          if old["identity"].get(k) != identity.get(k))
            if diff:
                keys = diff
                if "config" in diff:
                    oc, nc = old["identity"].get("config", {}), identity.get("config", {})
                    keys = [k for k in diff if k != "config"] + [f"config.{k}" for k in sorted(set(oc) | set(nc))
                                                                if oc.get(k) != nc.get(k)]
                raise ConfigError(f"{run.path} holds an unfinished run of a different job (differs in: "
                                  f"{', '.join(keys)}); use --overwrite to start over or another --workdir")
            return run
        if any(p.name != LOCK_NAME for p in run.path.iterdir()):
            raise ConfigError(f"{run.path} exists and is not a sidpipe run directory; use --overwrite or another --workdir")
        run.markers.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(manifest, json.dumps({"identity": identity, **extra}, indent=1, sort_keys=True).encode())
        return run

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    # Markers ---------------------------------------------------------------------------------------
    def done(self, name: str) -> bool:
        return (self.markers / f"{name}.done").exists()

    def mark(self, name: str) -> None:
        """Mark a stage complete and drop its per-tile markers."""
        (self.markers / f"{name}.done").touch()
        shutil.rmtree(self.markers / name, ignore_errors=True)

    def tiles_done(self, name: str) -> set[str]:
        folder = self.markers / name
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    def mark_tile(self, name: str, key: str) -> None:
        folder = self.markers / name
        folder.mkdir(exist_ok=True)
        (folder / key).touch()

    # Arrays ----------------------------------------------------------------------------------------
    def state(self) -> zarr.Group:
        return zarr.open_group(self.path / "state.zarr", mode="a")

    def reference(self) -> zarr.Group:
        return zarr.open_group(self.path / "ref.zarr", mode="a")

    def index_path(self, scale: int) -> Path:
        return self.path / f"index-s{scale}.faiss"


def state_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> zarr.Array:
    """The float32 array `name` of a group, created on first use (chunk = one compute tile)."""
    if name in group:
        return group[name]
    return group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=0.0)
