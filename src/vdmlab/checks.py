"""Argument checks shared by every configurable object (schedules, weightings, denoisers, datamodules, the module).

Each check returns the value converted (``int``, ``float``, ``bool``) or raises :class:`ParameterError`, which
carries the parameter names so that the config layer (``vdmlab.cli.validate``) can prefix its group, turning
``width=-8 is invalid: ...`` into ``model.width=-8 is invalid: ...``. Objects check their own arguments with
these in ``__init__``; start-up validation builds the objects from the config and collects the errors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ParameterError(ValueError):
    """``<name>=<value> is invalid: <reason>`` for one or more named parameters.

    ``names`` are parameter names as the object knows them; names with a dot are already full config keys
    and are not prefixed again.
    """

    def __init__(self, names: str | tuple[str, ...], values: Any, reason: str):
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.values = (values,) if isinstance(names, str) else tuple(values)
        self.reason = reason
        super().__init__(self.message())

    def message(self, prefix: str = "") -> str:
        """The message with ``prefix`` (e.g. ``"model."``) before every name that is not a full key already."""
        parts = [f"{name if '.' in name else prefix + name}={value!r}" for name, value in zip(self.names, self.values)]
        verb = "is" if len(parts) == 1 else "are"
        return f"{' and '.join(parts)} {verb} invalid: {self.reason}"


class MissingFolderError(ParameterError, FileNotFoundError):
    """A folder argument (e.g. a dataset root) that does not exist."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int | None = None, *, optional: bool = False,
              reason: str | None = None) -> int | None:
    """An integer (an integral float is accepted), at least ``minimum``; None too when ``optional``."""
    if value is None and optional:
        return None
    ok = _is_number(value) and math.isfinite(value) and int(value) == value
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        bound = f" >= {minimum}" if minimum is not None else ""
        default = f"null or an integer{bound}" if optional else f"it must be an integer{bound}"
        raise ParameterError(name, value, reason or default)
    return int(value)


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                open_min: bool = False, open_max: bool = False, optional: bool = False) -> float | None:
    """A finite number, optionally within bounds (closed unless ``open_min``/``open_max``); None when ``optional``."""
    if value is None and optional:
        return None
    ok = _is_number(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_max else value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            bound = f" in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
        elif minimum is not None:
            bound = f" {'>' if open_min else '>='} {minimum:g}"
        elif maximum is not None:
            bound = f" {'<' if open_max else '<='} {maximum:g}"
        else:
            bound = ""
        raise ParameterError(name, value, f"{'null or ' if optional else 'it must be '}a finite number{bound}")
    return float(value)


def check_positive(name: str, value: Any, *, optional: bool = False) -> float | None:
    """A finite number > 0."""
    return check_float(name, value, minimum=0.0, open_min=True, optional=optional)


def check_bool(name: str, value: Any) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ParameterError(name, value, "it must be true or false")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(name, value, f"it must be one of {', '.join(map(str, choices))}")
    return value


def check_int_list(name: str, value: Any, minimum: int | None = None) -> tuple[int, ...]:
    """A list of integers, each at least ``minimum``."""
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else None
    if items is None or not all(_is_number(v) and math.isfinite(v) and int(v) == v and (minimum is None or v >= minimum)
                                for v in items):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ParameterError(name, value, f"it must be a list of integers{bound}")
    return tuple(int(v) for v in items)


def check_folder(name: str, value: Any) -> Path:
    """An existing folder."""
    path = Path(str(value)).expanduser() if value is not None else None
    if path is None or not path.is_dir():
        where = f" ({path.resolve()})" if path is not None else ""
        reason = f"it is not an existing folder{where}: point dataset.{name} at the folder that holds the data"
        raise MissingFolderError(name, None if value is None else str(value), reason)
    return path
