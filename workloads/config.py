"""Typed pipeline configs: dataclasses filled from YAML plus `key=value` overrides.

Every pipeline declares one dataclass (nested dataclasses for sections). `load_config`
merges, in order: the dataclass defaults, a YAML file, then `--set a.b=value` overrides, and
checks every value against the declared type before anything else runs. A wrong field fails
with a `ConfigError` that names it (`sft.train.lr: expected float, got 'fast'`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, field or value is wrong; the message names it."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp) or (Any,)
        if origin is tuple and Ellipsis not in args and len(args) > 1:  # tuple[float, float]: fixed length
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown field; known fields of {where}: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    return obj


def to_dict(config: Any) -> dict:
    """The config as plain nested dicts (for YAML, MLflow params, Ray payloads)."""
    return dataclasses.asdict(config)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params and Tune spaces use."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are read as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads '3e-4' as a string
    return key.strip(), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "infinity")


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Defaults <- YAML file <- dotted `values` <- `key=value` overrides, all type-checked."""
    name = getattr(cls, "section", cls.__name__)
    data = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        _merge(data, loaded)
    for key, value in (values or {}).items():
        set_dotted(data, key, value)
    for text in overrides or []:
        set_dotted(data, *parse_override(text))
    return _build(cls, data, name)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def build_section(cls: type[T], data: dict, where: str) -> T:
    """A dataclass from a mapping, every value type-checked; errors name `where.field`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    return _build(cls, data, where)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config from `to_dict` output (inside Ray workers)."""
    return _build(cls, data, getattr(cls, "section", cls.__name__))


def require(condition: bool, field: str, message: str) -> None:
    """For `validate()` methods: fail naming the field."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def field_help(cls: type) -> dict[str, str]:
    """Each field's help, read from the comments written beside it in the dataclass's source: the
    comment at the end of the field's line, else the comment lines right above it. The source
    is the one place the help lives, so it cannot drift from a separate help table."""
    import inspect
    import io
    import tokenize

    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        names = {f.name for f in dataclasses.fields(klass)}
        for number, line in enumerate(lines, 1):
            name = line.strip().split(":", 1)[0]
            if name not in names or not line.startswith(" ") or ":" not in line:
                continue
            if number in comments and not line.strip().startswith("#"):
                helps[name] = comments[number]
                continue
            above, previous = [], number - 1
            while previous in comments and lines[previous - 1].strip().startswith("#"):
                above.insert(0, comments[previous])
                previous -= 1
            if above:
                helps[name] = " ".join(above)
    return helps


def section_summary(cls: type) -> str | None:
    """A section's help: the first paragraph of its class docstring (not dataclasses' generated one)."""
    doc = cls.__doc__ or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.strip().split("\n\n")[0].split())


def config_yaml(config: Any, indent: int = 0) -> str:
    """The config as YAML (loadable with `--config`), each field's help as a comment beside it."""
    helps = field_help(type(config))
    out = []
    pad = "  " * indent
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        help_text = helps.get(f.name)
        if help_text is None and dataclasses.is_dataclass(value):
            help_text = section_summary(type(value))
        comment = f"  # {help_text}" if help_text else ""
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:{comment}")
            out.append(config_yaml(value, indent + 1))
        else:
            rendered = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
            out.append(f"{pad}{f.name}: {rendered}{comment}")
    return "\n".join(out)


def refuse_overlap(overrides: list[str] | None, fields: Iterable[str], why: str) -> None:
    """Refuse a `--set` override of a field the command sets itself (a varied or sampled field),
    naming it: silently, the override would win and every arm or trial would be the same."""
    fields = list(fields)
    for text in overrides or []:
        key = parse_override(text)[0]
        for field in fields:
            if key == field or key.startswith(field + ".") or field.startswith(key + "."):
                raise ConfigError(f"--set {key}: {why} {field}; remove it from --set")
