"""Shipped cluster settings (slurm.yaml), read with importlib.resources by sidpipe.cluster.settings."""
