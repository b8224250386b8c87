"""Run configuration: one TOML file per run -> frozen dataclasses, dotted overrides, resolved copy.

Read top to bottom: errors -> command-line overrides -> dict <-> dataclass (types checked, unknown
keys rejected) -> TOML writer -> the sections every trainer shares (``[training]``, ``[output]``).

A trainer declares its config as a frozen dataclass whose fields are sections (themselves frozen
dataclasses with defaults), e.g. ``MlmConfig(data=..., vocab=..., model=..., training=..., output=...)``,
and calls :func:`load_config`. Nothing here imports torch.

Overrides use dotted keys, values parsed as TOML literals (a bare word that is not valid TOML is
taken as a string)::

    ropenlp train mlm recipe.toml --set training.lr=3e-4 --training.max_steps 2000 --output.dir runs/x
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
RESOLVED_FILE = "config.resolved.toml"


class ConfigError(ValueError):
    """A config file or override is invalid: the message names the dotted key."""


# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A TOML literal (``3e-4``, ``true``, ``"x"``, ``[1, 2]``, ``{a = 1}``), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--set", "a.b=1", "--a.c", "x", "--a.d=2"]`` -> ``{"a.b": 1, "a.c": "x", "a.d": 2}``."""
    out: dict[str, Any] = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--set":
            if i + 1 >= len(args) or "=" not in args[i + 1]:
                raise ConfigError("--set needs KEY=VALUE, e.g. --set training.lr=3e-4")
            key, _, value = args[i + 1].partition("=")
            i += 2
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"override {arg} needs a value, e.g. {arg} 3e-4 or {arg}=3e-4")
                value = args[i + 1]
                i += 1
            i += 1
        else:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key VALUE "
                              "or --set section.key=VALUE")
        key = key.strip().replace("-", "_")
        if "." not in key:
            raise ConfigError(f"override {key!r} must name a section and a key, e.g. training.{key}")
        out[key] = parse_value(value)
    return out


def apply_overrides(data: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of the nested dict ``data`` with each dotted key set (sections created as needed)."""
    data = json.loads(json.dumps(data))  # deep copy of plain TOML data
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


# --------------------------------------------------------------------------------------------
# dict <-> dataclass
# --------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "", base: Any = None) -> T:
    """Build the dataclass ``cls`` from plain data; nested dataclasses from tables; types checked.

    Missing keys keep the value in ``base`` (an instance of ``cls``) or else the field's default; a
    nested table starts from its field's default instance, so ``[model.encoder]`` may give one key
    only. An unknown key raises :class:`ConfigError` naming it and listing the allowed ones; a wrong
    type raises naming the key, the expected and the given type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {key!r}; allowed in [{where or 'top level'}]: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        current = getattr(base, name) if base is not None else _default(f)
        if name in data and dataclasses.is_dataclass(hints[name]) and isinstance(data[name], Mapping):
            start = current if current is not dataclasses.MISSING else None
            kwargs[name] = from_dict(hints[name], data[name], where=key, base=start)
        elif name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif current is not dataclasses.MISSING:
            kwargs[name] = current
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = from_dict(hints[name], {}, where=key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the dataclass's own validation (__post_init__), missing keys
        raise ConfigError(f"[{where or 'config'}]: {e}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} matches none of {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected an array ({_name(tp)}), got {_kind(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items ({_name(tp)}), got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {_kind(value)}")
        return dict(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 -> 10000
            return int(value)
    elif tp in (str, bool):
        if type(value) is tp:
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {_name(tp)}")
    raise ConfigError(f"{key}: expected {_name(tp)}, got {_kind(value)} {value!r}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array"}.get(type(value), type(value).__name__)


def to_dict(obj: Any) -> Any:
    """Plain data (tables, arrays, scalars) from a config dataclass; ``None`` values are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is not None:
                out[f.name] = to_dict(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(cls: type[T], path: str | Path | None,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> T:
    """Read a TOML file (or nothing: all defaults), apply dotted overrides, build ``cls``.

    ``overrides`` is a ``{"section.key": value}`` mapping or raw command-line words (see
    :func:`parse_overrides`).
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    return from_dict(cls, apply_overrides(data, overrides))


# --------------------------------------------------------------------------------------------
# TOML writer (tomllib only reads): enough for config data — tables, arrays of tables, scalars
# --------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def dumps_toml(data: Mapping[str, Any], *, _prefix: str = "") -> str:
    """TOML text for nested plain data (what :func:`to_dict` returns)."""
    def is_table_array(v):
        return isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v)

    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, Mapping) or is_table_array(v):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{_prefix}{_toml_key(k)}"
        if isinstance(v, Mapping):
            out += f"\n[{name}]\n" + dumps_toml(v, _prefix=name + ".")
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + dumps_toml(item, _prefix=name + ".")
    return out


def write_resolved(cfg: Any, directory: str | Path, name: str = RESOLVED_FILE) -> Path:
    """Write the fully resolved config (every default filled in) as TOML; it loads back as a config."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_toml(to_dict(cfg)).lstrip("\n"), encoding="utf-8")
    return path


def config_diff(a: Any, b: Any, *, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (or their plain data)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and k not in ignore)


# --------------------------------------------------------------------------------------------
# Sections every trainer shares
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """``[training]``: optimisation, schedule, intervals. Steps are optimizer steps."""

    seed: int = 0
    # the draw of the new weights (a task head) when set; training.seed otherwise. Runs that share it and
    # model.init start from the same weights whatever their seed, so their checkpoints can be averaged
    # (ropenlp train average): only the data order and dropout differ
    init_seed: int | None = None
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CUDA, or CPUs with AVX512-BF16)
    lr: float = 5e-4
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    batch_size: int = 32  # sequences per step
    batch_tokens: int = 0  # > 0: batches by padded-token budget (longest x count) instead
    max_steps: int = 0  # > 0 wins over epochs
    epochs: float = 1.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # fraction of the total steps; use one of the two
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # the schedule decays to lr * min_lr_ratio
    clip: float = 1.0  # max global gradient norm; 0 = off
    adversarial: float = 0.0  # > 0: FGM, a second forward/backward with the token embeddings moved this far
    # (L2 norm) along their gradient; the step then follows the sum of both gradients (~2x a step's cost)
    eval_every: int = 500  # steps; 0 = only at the end
    checkpoint_every: int = 500  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    log_every: int = 50  # steps between log lines when no progress bar is shown
    progress: Literal["auto", "on", "off"] = "auto"  # auto: a bar only when stderr is a terminal
    # a checkpoint folder (OUT/checkpoints/step-N) of an earlier run with the same data, seed and batch size: a
    # fresh run starts the data where that one stopped (a later stage of the same pass: no pair seen twice) with
    # its own weights (model.init), optimizer and schedule; "" = the data from its beginning
    data_from: str = ""

    def __post_init__(self):
        for name in ("lr", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"training.{name} must be > 0, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set training.max_steps or training.epochs > 0")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set training.warmup_steps or training.warmup_ratio, not both")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"training.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.adversarial < 0:
            raise ValueError(f"training.adversarial must be >= 0 (0 = off), got {self.adversarial}")

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps or math.ceil(self.epochs * steps_per_epoch)

    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps or int(self.warmup_ratio * total_steps)


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where a run writes its checkpoints, logs and final model."""

    dir: str = "runs/run"
