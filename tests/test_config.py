"""Strict YAML → dataclass loading: unknown keys, wrong types and overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cromss.config import apply_overrides, dump_config, from_dict, load_config, read_yaml
from cromss.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    name: str = "x"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    flag: bool = False

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"inner.lr must be > 0, got {self.lr}")


@dataclass
class Outer:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_defaults_and_nested_values():
    cfg = from_dict(Outer, {"seed": 3, "inner": {"lr": "5e-3", "sizes": [4]}})
    assert cfg.seed == 3 and cfg.inner.lr == 5e-3 and cfg.inner.sizes == [4] and cfg.maybe is None


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"inner\.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})


@pytest.mark.parametrize(
    "data, key",
    [({"seed": "three"}, "seed"), ({"inner": {"flag": "yes"}}, "inner.flag"),
     ({"inner": {"sizes": [1, "a"]}}, r"inner\.sizes\[1\]"), ({"seed": True}, "seed")],
)
def test_wrong_type_is_named(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(Outer, data)


def test_validate_is_called():
    with pytest.raises(ConfigError, match="inner.lr"):
        from_dict(Outer, {"inner": {"lr": -1}})


def test_overrides_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\ninner:\n  name: a\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "maybe=7", "inner.sizes=[3, 4]"])
    assert cfg.inner.lr == 0.5 and cfg.maybe == 7 and cfg.inner.sizes == [3, 4] and cfg.inner.name == "a"
    dump_config(cfg, tmp_path / "out.yaml")
    again = load_config(Outer, tmp_path / "out.yaml")
    assert again == cfg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])
