"""Exceptions that carry a message meant for the user (the CLI prints it and exits non-zero)."""


class SidpipeError(Exception):
    """Base class: a problem with the user's input or configuration, not a bug."""


class ImageError(SidpipeError):
    """An input image is missing, unreadable, or unusable (too small, wrong shape)."""


class ConfigError(SidpipeError):
    """An unknown preset, unknown config key, or a value of the wrong type or range."""


class Interrupted(SidpipeError):
    """SIGTERM (what Slurm sends before preemption) arrived: finished tiles are kept for a resume."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        self.signal_name = signal_name
        super().__init__(f"stopped by {signal_name}; finished tiles are kept: run the same command again to resume")


class DiskFull(SidpipeError):
    """ENOSPC (or a quota) while the run directory or the output was written: finished tiles are kept."""

    def __init__(self, where: str) -> None:
        super().__init__(f"no space left on device (writing {where}); finished tiles are kept: free space "
                         "(or move the run directory and pass --workdir) and run the same command again to resume")


def disk_full(exc: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT error that `exc` is, or was raised from or during; None if there is none."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
