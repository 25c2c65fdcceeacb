"""The one error type of a bad config, and how a bad value is shown in its one-line message."""

from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key, the value and what is allowed."""


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def show(value: Any) -> str:
    """repr() for error messages: one line, bounded (a YAML alias bomb repr()s to gigabytes)."""
    return _SHORT.repr(value)


def show_key(key: Any) -> str:
    """A key as typed, unless it holds line breaks or other unprintable characters."""
    return key if isinstance(key, str) and key.isprintable() else show(key)
