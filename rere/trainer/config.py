"""Run configuration: a dataclass filled from its defaults, then a YAML file, then overrides
(command-line flags), each later source winning; an override of None means "not given".

Values are checked against the fields' annotations and converted where the source could not
know the type: PyYAML reads `1e-4` (no dot) as a string, which a float field accepts. Errors
name the field and where its value came from. Supported annotations: int, float, bool, str,
Literal[...], X | None, and list[X], tuple[X, ...], tuple[X, Y, ...] of those scalars.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml

from rere.files import write_atomically


def setting(help: str, **kwargs):
    """A config dataclass field with its `--flag` help text (`add_config_arguments` reads it)."""
    return dataclasses.field(metadata={"help": help}, **kwargs)


def load_config(cls: type, yaml_path: str | os.PathLike | None = None, overrides: Mapping | None = None):
    """An instance of dataclass `cls`: its defaults, updated by the YAML file's values, then
    by the overrides that are not None."""
    kinds = _field_types(cls)
    given: dict[str, tuple[object, str]] = {}  # field -> (value, where it came from)
    if yaml_path is not None:
        for name, value in _read_yaml(Path(yaml_path)).items():
            _check_known(name, kinds, f"{yaml_path}: key")
            given[name] = (value, str(yaml_path))
    for name, value in (overrides or {}).items():
        _check_known(name, kinds, "override")
        if value is not None:
            given[name] = (value, "overrides")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in given
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{cls.__name__}: no value for {missing} (these fields have no default)")
    values = {}
    for name, (value, source) in given.items():
        try:
            values[name] = _convert(value, kinds[name], f"{cls.__name__}.{name}")
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    return cls(**values)


def config_to_dict(cfg) -> dict:
    """The fields as plain YAML/JSON data (tuples become lists)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the fields as YAML (atomically); `load_config(type(cfg), path)` reads them back."""
    write_atomically(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip=()) -> None:
    """A `--field-name` flag per field of `cls` (booleans also `--no-field-name`), default None
    so that only the flags given override (see `overrides_from_args`)."""
    kinds = _field_types(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip:
            continue
        described = f"{field.metadata.get('help', '')} (default: {_default(field)})".strip()
        options = {"dest": field.name, "default": None, "help": described.replace("%", "%%")}
        flag = "--" + field.name.replace("_", "-")
        kind = _without_none(kinds[field.name])
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=args, type=type(args[0]), **options)
        elif origin in (list, tuple):
            fixed = origin is tuple and Ellipsis not in args
            items = set(args if fixed else args[:1])
            parser.add_argument(flag, nargs=len(args) if fixed else "*",
                                type=_command_line_type(items.pop()) if len(items) == 1 else None, **options)
        else:
            parser.add_argument(flag, type=_command_line_type(kind), **options)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict:
    """The fields of `cls` given on the command line (flags left out are None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


# -- helpers -------------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, object]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)  # resolves annotations written as strings
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field names to values, found {type(data).__name__}")
    return data


def _check_known(name, kinds: Mapping[str, object], what: str) -> None:
    if name not in kinds:
        close = difflib.get_close_matches(str(name), list(kinds), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known fields: {', '.join(kinds)}"
        raise ValueError(f"{what} {name!r} is not a configuration field{hint}")


def _without_none(kind):
    """X for `X | None` (Optional[X]); `kind` itself otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return kind


def _convert(value, kind, where: str):
    """`value` as annotation `kind`; an error naming `where` when it does not fit."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = _without_none(kind)
        if inner is kind:
            raise TypeError(f"{where}: annotation {kind} is not supported (only X | None unions)")
        return _convert(value, inner, where)
    if origin is typing.Literal:
        # `in` alone would let True pass for 1: the type must match too.
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: {value!r} is not a list")
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise ValueError(f"{where}: {value!r} has {len(value)} items, expected {len(args)}")
            items = args
        else:
            items = args[:1] * len(value)
        return origin(_convert(item, item_kind, f"{where}[{i}]")
                      for i, (item, item_kind) in enumerate(zip(value, items)))
    if kind in (int, float, bool, str):
        return _scalar(value, kind, where)
    raise TypeError(f"{where}: annotation {kind} is not supported by rere.trainer.config")


def _scalar(value, kind: type, where: str):
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    if kind in (int, float) and not isinstance(value, bool):
        number = _parse_number(value)
        if kind is float and number is not None:
            return float(number)
        if kind is int and number is not None and float(number).is_integer():  # "1e6" or 3.0
            return int(number)
    hint = " (quote it in YAML)" if kind is str else ""
    raise ValueError(f"{where}: {value!r} is not {kind.__name__}{hint}")


def _parse_number(value) -> int | float | None:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
    return None


def _command_line_type(kind):
    """argparse's converter for a scalar; None (strings, converted by load_config) otherwise."""
    return kind if kind in (int, float, str) else None


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "required"


def _plain(value):
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value
