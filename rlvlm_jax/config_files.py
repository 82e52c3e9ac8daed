"""Experiment config files: loading one by path, configs that build on a sibling file, and
`--config.a.b=v` overrides that name no field."""

import importlib.util
import os
from types import ModuleType

import ml_collections


def load_sibling(anchor_file: str, name: str) -> ModuleType:
    """Imports the config file `name` from the folder of `anchor_file` (configs are loaded by
    path, so sibling files are not importable as modules)."""
    path = os.path.join(os.path.dirname(os.path.abspath(anchor_file)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file given as `path[:arg]`, as the --config flag reads it."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_rlvlm_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def unknown_fields(config_path: str | None, argv: list[str]) -> list[str]:
    """The `--config.a.b=v` overrides in `argv` naming fields the config file does not have
    (empty when the file itself cannot be read: the flags parser reports that)."""
    if not config_path:
        return []
    try:
        config = load(config_path)
    except Exception:  # noqa: BLE001 - the flags parser reports unreadable files itself
        return []
    missing = []
    for a in argv:
        if a.startswith("--config."):
            field = a[len("--config."):].split("=", 1)[0]
            node = config
            for part in field.split("."):
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    missing.append(field)
                    break
                node = node[part]
    return missing
