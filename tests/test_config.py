import dataclasses
from typing import ClassVar, Literal

import pytest

from workloads.config import ConfigError, flatten, load_config, parse_override, require


@dataclasses.dataclass
class Inner:
    lr: float = 0.1
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    section: ClassVar[str] = "inner"

    def validate(self):
        require(self.lr > 0, "lr", "must be > 0")


@dataclasses.dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    init: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)
    section: ClassVar[str] = "demo"


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ninner:\n  steps: 20\n")
    config = load_config(Outer, path, ["inner.lr=3e-4", "flag=true", "inner.kind=b"])
    assert config.name == "from-file"
    assert config.inner.steps == 20
    assert config.inner.lr == pytest.approx(3e-4)
    assert config.flag is True and config.inner.kind == "b"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("inner.nope=1", "demo.inner.nope: unknown field"),
        ("inner.steps=ten", "demo.inner.steps: expected int"),
        ("inner.lr=-1", "demo.inner.lr: must be > 0"),
        ("inner.kind=c", "demo.inner.kind"),
        ("flag=maybe", "demo.flag: expected true/false"),
        ("inner=3", "demo.inner: expected a section"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(Outer, None, [override])


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(Outer, bad)


def test_optional_and_numeric_parsing():
    assert parse_override("a=1e-3") == ("a", 0.001)
    assert parse_override("a=null") == ("a", None)
    assert load_config(Outer, None, ["init=/tmp/model"]).init == "/tmp/model"
    assert flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}
