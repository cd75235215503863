"""Site defaults of `--cluster slurm` (package data read with importlib.resources)."""
