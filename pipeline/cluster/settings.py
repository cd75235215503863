"""Cluster settings (`cluster:`): what worker jobs and batch tasks ask Slurm for.

Looked up in this order, each later source overriding the earlier ones key by key:

1. the defaults shipped with sidpipe (`configs/cluster/slurm.yaml`, package data);
2. the site file: $SIDPIPE_SITE_CONFIG if set, else /etc/sidpipe/slurm.yaml (edited once by an admin);
3. the user file: $XDG_CONFIG_HOME/sidpipe/slurm.yaml (default ~/.config/sidpipe/slurm.yaml);
4. the `cluster:` section of the preset given with --preset;
5. `--set cluster.KEY=VALUE` on the command line.

`sidpipe slurm-script` prints the result (and the files it came from) as comments of the script.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

DEFAULTS = ("sidpipe.configs", "cluster/slurm.yaml")


@dataclass(frozen=True)
class ClusterSettings:
    """One Slurm job's request (see configs/cluster/slurm.yaml for each key's meaning)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = "04:00:00"
    cores: int = 4
    tasks_per_job: int = 1
    memory: str = "8GB"
    gres: str | None = None
    prologue: list[str] = field(default_factory=list)
    python: str | None = None
    interface: str | None = None
    extra: list[str] = field(default_factory=list)
    local_directory: str | None = None
    death_timeout: int = 120
    dashboard: str | None = ":8787"
    requeue_signal_seconds: int = 300
    sources: tuple[str, ...] = ()  # where the values came from (not a setting)

    def __post_init__(self) -> None:
        if self.cores < 1 or self.tasks_per_job < 1 or self.tasks_per_job > self.cores:
            raise ConfigError("cluster.cores must be >= 1 and cluster.tasks_per_job in 1..cores")
        if self.death_timeout < 1 or self.requeue_signal_seconds < 0:
            raise ConfigError("cluster.death_timeout must be >= 1 and cluster.requeue_signal_seconds >= 0")
        parts = self.walltime.split("-")[-1].split(":")
        if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
            raise ConfigError(f"cluster.walltime must look like HH:MM:SS or D-HH:MM:SS, got {self.walltime!r}")

    @property
    def threads_per_task(self) -> int:
        return max(1, self.cores // self.tasks_per_job)

    def walltime_seconds(self) -> int:
        days, _, clock = self.walltime.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]

    def directives(self) -> list[str]:
        """#SBATCH options common to worker jobs and batch tasks, besides -t/-c/--mem."""
        out = []
        for flag, value in (("-p", self.partition), ("-A", self.account), ("--qos", self.qos), ("--gres", self.gres)):
            if value:
                out.append(f"{flag} {value}")
        return out + list(self.extra)


def site_file() -> Path:
    return Path(os.environ.get("SIDPIPE_SITE_CONFIG") or "/etc/sidpipe/slurm.yaml")


def user_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sidpipe" / "slurm.yaml"


def _read(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of cluster settings")
    return data


def _coerce(key: str, value: Any) -> Any:
    """A value from YAML or --set, checked against the field's type (null allowed for optional keys)."""
    kind = {f.name: f.type for f in fields(ClusterSettings)}[key]
    if key == "walltime" and isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 04:00:00 as sexagesimal seconds (14400)
        value = f"{value // 3600:02d}:{value % 3600 // 60:02d}:{value % 60:02d}"
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""):
        value = None
    if value is None:
        if "None" in str(kind):
            return None
        raise ConfigError(f"cluster.{key} cannot be empty")
    if "list" in str(kind):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(";") if part.strip()]  # --set cluster.prologue="a; b"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"cluster.{key} must be a list of strings")
        return value
    if "int" in str(kind):
        try:
            return int(value) if not isinstance(value, bool) else _bad(key, value)
        except (TypeError, ValueError):
            _bad(key, value)
    return str(value)


def _bad(key: str, value: Any):
    raise ConfigError(f"cluster.{key}: expected an integer, got {value!r}")


def load_settings(preset_section: dict[str, Any] | None = None, overrides: dict[str, str] | None = None) -> ClusterSettings:
    """The merged settings (see the module docstring for the order)."""
    known = {f.name for f in fields(ClusterSettings)} - {"sources"}
    values: dict[str, Any] = {}
    sources = []
    layers: list[tuple[str, dict[str, Any]]] = []
    package, name = DEFAULTS
    layers.append((f"{package}/{name} (shipped defaults)", _read(resources.files(package).joinpath(name).read_text(),
                                                                  "the shipped cluster defaults")))
    for path in (site_file(), user_file()):
        if path.is_file():
            layers.append((str(path), _read(path.read_text(), str(path))))
    if preset_section:
        layers.append(("the preset's cluster: section", preset_section))
    if overrides:
        layers.append(("--set cluster.*", overrides))
    for where, layer in layers:
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ConfigError(f"unknown cluster setting {unknown[0]!r} in {where} (known: {', '.join(sorted(known))})")
        values.update({k: _coerce(k, v) for k, v in layer.items()})
        sources.append(where)
    return ClusterSettings(**values, sources=tuple(sources))


def split_overrides(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """--set items into (config keys, cluster keys without the `cluster.` prefix)."""
    config = {k: v for k, v in overrides.items() if not k.startswith("cluster.")}
    cluster = {k[len("cluster."):]: v for k, v in overrides.items() if k.startswith("cluster.")}
    return config, cluster
