"""What any run or analysis is given, read at the edge: settings from plain values (notebook parameters, study
YAML, ``--set KEY=VALUE``), each coerced to its field's type, and the two errors bad input raises before any work
starts, naming the problem and the legal values. Shared by the CIFAR-10, ImageNet and analysis configurations."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


class DataError(ValueError):
    """The data source is missing, malformed or unreachable; the message says how to fix it."""


def identity_hash(identity: dict[str, Any]) -> str:
    """A run's fingerprint: 16 hex digits of the SHA-256 of its identifying settings as sorted JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def from_mapping(config_class: type, values: dict[str, Any]):
    """A settings dataclass (``TrainConfig``, ``ImageNetConfig``) from plain values: an unknown key is
    an error naming the nearest legal one and listing them all; each value is coerced to its field's type."""
    known = {f.name: f for f in fields(config_class)}
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = [f"{key!r}" + "".join(f" (did you mean {close!r}?)" for close in
                                      difflib.get_close_matches(key, known, n=1)) for key in unknown]
        raise ConfigError(f"unknown parameter {', '.join(hints)}; legal parameters: {', '.join(known)}")
    return config_class(**{key: coerce_value(key, value, known[key].type) for key, value in values.items()})


def coerce_value(key: str, value: Any, annotation: str) -> Any:
    """A setting's value from its natural spellings (``"0.1"``, ``"true"``, ``"30 60"``) for the type
    its dataclass field declares; anything else is a ``ConfigError`` naming ``key``."""
    optional = "None" in annotation
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be None")
    if "tuple[str" in annotation:  # names, such as an analysis's moments
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, (list, tuple)) or not all(isinstance(part, str) for part in value):
            raise ConfigError(f"{key}: expected a list of names, got {value!r}")
        return tuple(value)
    if "tuple" in annotation:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of whole numbers, got {value!r}")
        try:
            return tuple(int(part) for part in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a list of whole numbers, got {value!r}") from None
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if "int" in annotation:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(value)
    if "float" in annotation:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected text, got {value!r}")
    return value
