"""Running on a cluster: settings (site / user / preset / --set), Slurm worker jobs, batch arrays, requeue."""

from .settings import ClusterSettings, load_settings, split_overrides

__all__ = ["ClusterSettings", "load_settings", "split_overrides"]
