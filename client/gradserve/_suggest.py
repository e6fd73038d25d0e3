"""Messages for a misspelt key: what is allowed, and the closest match."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_key(key: str, allowed: Iterable[str]) -> str:
    """
    >>> unknown_key("opps", ["ops", "wrt"])
    "unknown key 'opps' (did you mean 'ops'?); allowed: ['ops', 'wrt']"
    """
    options = sorted(allowed)
    close = difflib.get_close_matches(str(key), options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed: {options}"
