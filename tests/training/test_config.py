"""Config: TOML into frozen dataclasses, dotted overrides, unknown keys rejected, resolved copy."""

import dataclasses
import tomllib
from dataclasses import dataclass, field

import pytest

from training.config import (
    ConfigError,
    OutputConfig,
    TrainingConfig,
    config_diff,
    dumps_toml,
    load_config,
    parse_overrides,
    to_dict,
    write_resolved,
)


@dataclass(frozen=True)
class Source:
    paths: tuple[str, ...]
    format: str = "lines"


@dataclass(frozen=True)
class Inner:
    size: int = 4
    name: str = "x"


@dataclass(frozen=True)
class Section:
    ratio: float = 0.5
    inner: Inner = field(default_factory=lambda: Inner(size=0))
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    section: Section = field(default_factory=Section)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def test_parse_overrides_all_spellings():
    got = parse_overrides(["--set", "training.lr=3e-4", "--training.max_steps", "200", "--output.dir=runs/x",
                           "--section.inner.name", '"quoted"', "--training.betas", "[0.9, 0.98]",
                           "--training.progress", "off"])
    assert got == {"training.lr": 3e-4, "training.max_steps": 200, "output.dir": "runs/x",
                   "section.inner.name": "quoted", "training.betas": [0.9, 0.98], "training.progress": "off"}


@pytest.mark.parametrize("args", [["--set", "training.lr"], ["--training.lr"], ["lr=3"], ["--lr", "3"]])
def test_bad_override_syntax(args):
    with pytest.raises(ConfigError):
        parse_overrides(args)


def test_load_file_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[training]\nlr = 1e-3\nmax_steps = 10\n[[section.sources]]\npaths = ["a/*.txt"]\n'
                    '[section.inner]\nname = "y"\n', encoding="utf-8")
    cfg = load_config(RunConfig, path, ["--training.lr", "3e-4", "--set", "section.ratio=1"])
    assert cfg.training.lr == 3e-4 and cfg.training.max_steps == 10
    assert cfg.section.ratio == 1.0 and isinstance(cfg.section.ratio, float)
    assert cfg.section.sources == (Source(paths=("a/*.txt",)),)
    # a partial nested table keeps the field's own default for the rest (size=0, not Inner's 4)
    assert cfg.section.inner == Inner(size=0, name="y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.lr = 1.0  # type: ignore[misc]


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, {"training.learning_rate": 1e-3})
    assert "'training.learning_rate'" in str(e.value) and "lr" in str(e.value) and "max_steps" in str(e.value)
    with pytest.raises(ConfigError, match="'traning'"):
        load_config(RunConfig, None, {"traning.lr": 1e-3})
    with pytest.raises(ConfigError, match=r"section\.sources\[0\]\.colour"):
        load_config(RunConfig, None, {"section.sources": [{"paths": ["a"], "colour": 1}]})


@pytest.mark.parametrize("key, value, message", [
    ("training.lr", "fast", "training.lr: expected float"),
    ("training.max_steps", 2.5, "training.max_steps: expected int"),
    ("training.schedule", "step", "'linear', 'cosine', 'constant'"),
    ("training.batch_size", 0, "batch_size must be > 0"),
    ("section.inner", 3, "section.inner: expected a table"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, None, {key: value})


def test_resolved_config_written_and_reloads(tmp_path):
    cfg = load_config(RunConfig, None, {"training.lr": 2e-4, "section.sources": [{"paths": ["x", "y"]}],
                                        "section.inner.name": 'a "quoted" 名字'})
    path = write_resolved(cfg, tmp_path / "run")
    assert path.name == "config.resolved.toml"
    text = path.read_text(encoding="utf-8")
    assert "[training]" in text and "[[section.sources]]" in text and "warmup_ratio = 0.0" in text
    assert load_config(RunConfig, path) == cfg
    assert tomllib.loads(dumps_toml(to_dict(cfg))) == to_dict(cfg)


def test_config_diff():
    a = load_config(RunConfig, None, {})
    b = load_config(RunConfig, None, {"training.lr": 1e-3, "training.threads": 2})
    assert config_diff(a, b) == ["training.lr", "training.threads"]
    assert config_diff(a, b, ignore=["training.threads"]) == ["training.lr"]
