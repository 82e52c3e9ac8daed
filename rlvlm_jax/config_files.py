"""Experiment config files: loading one by path, configs that build on a sibling file,
`--config.a.b=v` overrides that name no field, and the command lines' flag parsing (one-line
errors instead of tracebacks)."""

import importlib.util
import os
import re
import sys
from types import ModuleType

import ml_collections
from absl import flags


def load_sibling(anchor_file: str, name: str) -> ModuleType:
    """Imports the config file `name` from the folder of `anchor_file` (configs are loaded by
    path, so sibling files are not importable as modules)."""
    path = os.path.join(os.path.dirname(os.path.abspath(anchor_file)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Fields added to the task configs after runs were made without them, with the value a config
# that lacks one means. The builder reads an absent field as this value, and the report fills it in
# before comparing the seeds of a row, so runs from before and after a field appeared still group.
LATER_FIELDS = {
    "env.kind": "gymnax",
    "env.host": "",
    "env.style": "default",
    "env.card_images": "",
    "env.blanks": "skip",
    "model.family": "llava",
    "ppo.policy_loss": "ppo_clip",
    "ppo.value_loss": "clipped",
    "sft.json": "",
    "sft.sort_values": False,
    "sft.text_corpus": "",
    "sft.text_batch_size": 0,
}


def field(config, name: str, default=None):
    """`config`'s value at a dotted name; when absent, `default`, else its `LATER_FIELDS` value,
    else None."""
    node = config
    for part in name.split("."):
        if part not in node:
            return LATER_FIELDS.get(name) if default is None else default
        node = node[part]
    return node


def flatten(config: dict, prefix: str = "") -> dict:
    """A config as JSON (nested dicts) -> {"a.b": value}: the dotted names overrides use."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in `argv` (None when absent)."""
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def flag_error(argv: list[str], error: BaseException) -> str:
    """One line saying what is wrong with the command line `argv` (program name first), given
    the exception its parsing raised."""
    path = flag_value(argv[1:], "config")
    missing = unknown_fields(path, argv[1:])
    if missing:
        return (f"the config has no field {', '.join(missing)} (from "
                f"{', '.join('--config.' + m for m in missing)})")
    text = " ".join(str(error).split())
    required = re.match(r"flag --(\w+)=None: Flag --\1 must have a value other than None", text)
    if required:
        return f"--{required.group(1)} is required"
    if isinstance(error, flags.Error):
        return text
    return f"cannot load config file {path!r}: {type(error).__name__}: {text}"


def parse_flags(argv: list[str], flag_values: flags.FlagValues | None = None) -> list[str]:
    """absl's flag parsing for `train` and `evaluate` (`app.run(..., flags_parser=parse_flags)`):
    a config file that does not exist or does not load, an unknown `--config.a.b` field, a value
    of the wrong type, a missing required flag, an unknown flag or a positional argument is one
    line `error: ...` on stderr and exit code 2, not a traceback or the usage text. Returns the
    arguments left over (the program name), like absl's."""
    fv = flags.FLAGS if flag_values is None else flag_values
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        return fv(argv)  # absl prints the help and exits
    path = flag_value(argv[1:], "config")
    if path and not os.path.isfile(path.partition(":")[0]):
        print(f"error: config file {path.partition(':')[0]!r} does not exist", file=sys.stderr)
        sys.exit(2)
    try:
        rest = fv(argv)
        if "config" in fv and fv["config"].value is not None:
            _ = fv["config"].value.keys()  # a file that failed to load raises here
    except Exception as e:  # noqa: BLE001 - every failure here is a bad command line
        print(f"error: {flag_error(argv, e)}", file=sys.stderr)
        sys.exit(2)
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]} (flags are --name=value)", file=sys.stderr)
        sys.exit(2)
    return rest
