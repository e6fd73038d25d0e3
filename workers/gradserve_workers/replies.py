"""How large a computation's reply is, from shapes alone (torch-free).

The one formula for the size of each operation's result, shared by the server
(which estimates a reply before dispatching, knowing the inputs' shapes but not
always the output's) and by the worker (which knows the output's shape after one
evaluation of the function and checks again before differentiating).

Per point, with ``out`` the function's output elements and ``n`` the elements of
all ``wrt`` inputs together:

    value, jvp: out       grad, vjp, hvp: n       jacobian: out * n       hessian: n * n
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gradserve_workers.lang.errors import LimitExceededError

# ops whose result has the output's shape, or the output's times the inputs'
NEEDS_OUTPUT_SHAPE = frozenset({"value", "jvp", "jacobian"})


def op_elements(op: str, out: int, n: int) -> int:
    """Elements of one op's result for one point (all wrt inputs together)."""
    if op in ("value", "jvp"):
        return out
    if op == "jacobian":
        return out * n
    if op == "hessian":
        return n * n
    return n  # grad, vjp, hvp: one array shaped like each wrt input


def reply_elements(ops: Iterable[str], out: int, n: int) -> int:
    return sum(op_elements(op, out, n) for op in ops)


def describe(ops: Iterable[str], out: int | None, n: int, points: int, itemsize: int) -> str:
    """The estimate's terms in words, e.g. ``jacobian: 10000 outputs x 10000 inputs``."""
    terms = []
    shown = "?" if out is None else str(out)
    for op in ops:
        if op in ("value", "jvp"):
            terms.append(f"{op}: {shown} outputs")
        elif op == "jacobian":
            terms.append(f"{op}: {shown} outputs x {n} inputs")
        elif op == "hessian":
            terms.append(f"{op}: {n} x {n} inputs")
        else:
            terms.append(f"{op}: {n} inputs")
    unit = "point" if points == 1 else "points"
    return f"{'; '.join(terms)}; x {points} {unit} x {itemsize} bytes"


@dataclass(frozen=True)
class ReplyBudget:
    """The most bytes one call's reply may hold (0: no limit), and what the worker
    needs to check it once the output's shape is known: the call's points (all
    chunks) and item size. ``message_bytes`` is a unary call's message limit: a reply
    over it is refused with ``limit="message"``, which tells the caller to stream."""

    max_bytes: int
    points: int
    itemsize: int
    flag: str = "--max-reply-bytes"
    message_bytes: int = 0

    def check(self, call: str, ops: Iterable[str], out: int, n: int) -> None:
        ops = tuple(ops)
        size = reply_elements(ops, out, n) * self.points * self.itemsize
        if size > self.max_bytes > 0:
            raise LimitExceededError(over_reply_budget(call, size, self, ops, out, n), "reply")
        if size > self.message_bytes > 0:
            raise LimitExceededError(
                f"{call}: the reply would be {size:,} bytes, over the message limit of "
                f"{self.message_bytes:,} (--max-message-bytes); call ComputeStream (the SDK "
                "retries there by itself)",
                "message",
            )


def over_reply_budget(
    call: str, size: int, budget: ReplyBudget, ops: Iterable[str], out: int | None, n: int
) -> str:
    at_least = "at least " if out is None else ""
    return (
        f"{call}: the reply would be {at_least}{size:,} bytes "
        f"({describe(ops, out, n, budget.points, budget.itemsize)}), over the server's reply "
        f"budget of {budget.max_bytes:,} bytes ({budget.flag}); ask for fewer points or "
        "a smaller output, or run it as a job"
    )
