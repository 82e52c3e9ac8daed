"""Experiment configs that build on another config file beside them (big_vision style files)."""

import importlib.util
import os
from types import ModuleType


def load_sibling(anchor_file: str, name: str) -> ModuleType:
    """Imports the config file `name` from the folder of `anchor_file` (configs are loaded by
    path, so sibling files are not importable as modules)."""
    path = os.path.join(os.path.dirname(os.path.abspath(anchor_file)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
