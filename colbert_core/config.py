"""Frozen configuration dataclasses: built from flat mappings, validated, turned back into dicts.

Every command's settings are a frozen dataclass (possibly holding other ones, e.g. an encode
job = the output-defining :class:`~colbert_core.embeddings.EncodeConfig` + how workers are
placed). A command line and a YAML section are both *flat* mappings of field names to
values; :func:`config_from_mapping` routes each key to the (nested) field of that name,
checks its type, and refuses unknown keys with the list of allowed ones, so a misspelt
``shard_sise`` is an error naming the file, the section and the key.

Examples
--------
>>> from colbert_core.search import SearchParams
>>> config_from_mapping(SearchParams, {"k": 10, "k_prime": 32}, "demo.yaml: search")
SearchParams(k=10, k_prime=32, max_candidates=256, nprobe=None, ef_search=None, full_scores=None)
>>> config_from_mapping(SearchParams, {"kk": 5}, "demo.yaml: search")
Traceback (most recent call last):
...
colbert_core.errors.ConfigError: demo.yaml: search: unknown key 'kk'; allowed: ef_search, full_scores, k, k_prime, max_candidates, nprobe
>>> config_from_mapping(SearchParams, {"k": 0}, "demo.yaml: search")
Traceback (most recent call last):
...
colbert_core.errors.ConfigError: demo.yaml: search: k must be positive, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def check_positive(config: Any, *names: str) -> None:
    """Raise :class:`ConfigError` unless each named field is ``None`` or positive."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError.invalid(name, f"must be positive, got {value}")


def check_non_negative(config: Any, *names: str) -> None:
    """Raise :class:`ConfigError` unless each named field is ``None`` or >= 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ConfigError.invalid(name, f"must not be negative, got {value}")


def check_choice(config: Any, name: str, choices: typing.Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless the field's value is one of ``choices``."""
    value = getattr(config, name)
    allowed = list(choices)
    if value not in allowed:
        raise ConfigError.invalid(name, f"must be one of {', '.join(allowed)}, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that are dataclasses themselves (filled from the same mapping)."""
    return {
        f.name: _hints(cls)[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(_hints(cls)[f.name], type) and dataclasses.is_dataclass(_hints(cls)[f.name])
    }


def allowed_keys(cls: type) -> set[str]:
    """Every key :func:`config_from_mapping` accepts for ``cls`` (nested fields included)."""
    keys: set[str] = set()
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        keys |= allowed_keys(nested[f.name]) if f.name in nested else {f.name}
    return keys


def config_from_mapping(
    cls: type[C],
    values: Mapping[str, Any],
    where: str,
    name: typing.Callable[[str], str] = str,
) -> C:
    """Build ``cls`` from a flat mapping; ``where`` prefixes every error message.

    Keys of nested dataclass fields are given flat (``shard_size``, not
    ``encode.shard_size``); absent keys keep their defaults. ``name`` turns a field name
    into what the user wrote (e.g. ``k_prime`` -> ``--k-prime``) in messages.

    Raises
    ------
    ConfigError
        For an unknown key, a value of the wrong type, a missing required field, or a
        value the dataclass's own validation refuses.
    """
    unknown = set(values) - allowed_keys(cls)
    if unknown:
        allowed = ", ".join(sorted(name(k) for k in allowed_keys(cls)))
        names = ", ".join(repr(name(k)) for k in sorted(unknown))
        plural = "keys" if len(unknown) > 1 else "key"
        raise ConfigError(f"{where}: unknown {plural} {names}; allowed: {allowed}")
    return _build(cls, values, where, name)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _build(
    cls: type[C], values: Mapping[str, Any], where: str, name: typing.Callable[[str], str]
) -> C:
    nested = _nested(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            if allowed_keys(nested[f.name]) & set(values) or not _has_default(f):
                kwargs[f.name] = _build(nested[f.name], values, where, name)
        elif f.name in values:
            hint = _hints(cls)[f.name]
            kwargs[f.name] = _coerce(values[f.name], hint, f"{where}: {name(f.name)}")
    missing = [
        name(f.name)
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.name not in nested and not _has_default(f)
    ]
    if missing:
        raise ConfigError(f"{where}: missing required {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.key is not None and exc.detail is not None:
            raise ConfigError(
                f"{where}: {name(exc.key)} {exc.detail}", key=exc.key, detail=exc.detail
            ) from exc
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints widen to floats, lists to tuples)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass, tuples as lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def read_yaml_mapping(path: str, what: str, error: type[ConfigError] = ConfigError) -> dict:
    """The YAML file at ``path`` as a mapping; ``error`` (naming ``what`` it is, the file
    and the line) when it is missing, invalid, or not a mapping."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} {path} not found") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{line}: invalid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw
