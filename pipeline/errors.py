"""Exceptions that carry a message meant for the user (the CLI prints it and exits non-zero)."""


class SidpipeError(Exception):
    """Base class: a problem with the user's input or configuration, not a bug."""


class ImageError(SidpipeError):
    """An input image is missing, unreadable, or unusable (too small, wrong shape)."""


class ConfigError(SidpipeError):
    """An unknown preset, unknown config key, or a value of the wrong type or range."""


class Interrupted(SidpipeError):
    """SIGTERM (what Slurm sends before preemption) arrived: finished tiles are kept for a resume."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM; finished tiles are kept: run the same command again to resume")
