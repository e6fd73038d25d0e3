"""Bounds on the strings the job store keeps and the job RPCs send back.

Anything a user can make long (an error message that quotes a 14,000-character
input name, a name written by an older server) is cut to a fixed number of
characters with a marker that says how much was cut, so no stored row and no
reply grows with what a user sent.
"""

from __future__ import annotations

import re

# An error message as stored and as sent back in Job.errors and TaskResult.error.
MAX_ERROR_CHARS = 2_000
# Read back at most this much: a message clipped when stored keeps its marker whole.
MAX_ERROR_READ_CHARS = MAX_ERROR_CHARS + 40
# Names and ids echoed back (a job's name, a task's id, an idempotency key).
MAX_ECHO_CHARS = 200


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a marker saying how many more.

    >>> clip("abcdef", 4)
    'abcd… [2 more characters]'
    >>> clip("abc", 4)
    'abc'
    """
    if len(text) <= limit:
        return text
    return marked(text[:limit], len(text), limit)


def marked(head: str, total: int, limit: int) -> str:
    """The marker for a text of ``total`` characters of which ``head`` was kept."""
    if total <= limit:
        return head
    return f"{head[:limit]}… [{total - limit} more characters]"


# C0 and C1 control characters and DEL: never part of a name, and the job store
# uses one (\x1f) to scope a tenant's idempotency keys.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def control_char(text: str) -> int | None:
    r"""The index of the first control character in ``text``, or None.

    >>> control_char("a\x1fb"), control_char("tab\there"), control_char("ok é")
    (1, 3, None)
    """
    found = _CONTROL.search(text)
    return found.start() if found else None
