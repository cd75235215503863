"""Bundled presets (`sidpipe.configs`): YAML files read with importlib.resources, never from the source tree."""
