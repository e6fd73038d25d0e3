"""The ``gradserve`` command line: serve, compute, check, and (with the server) jobs.

Values for ``--input name=VALUE`` are a JSON list or number, a ``.npy`` file, or
a range ``linspace(a, b, n)`` / ``arange(a, b, step)``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradserve._client import Client
from gradserve._config import TLS
from gradserve.errors import GradserveError, InvalidSpecError
from gradserve.names import DTYPES
from gradserve.results import JobStatus

_RANGE = re.compile(r"^\s*(linspace|arange)\s*\(([^()]*)\)\s*$")


class UsageError(Exception):
    pass


def parse_value(text: str) -> np.ndarray:
    """A CLI value: JSON, a .npy path or a linspace/arange range.

    >>> parse_value("[1, 2]").tolist()
    [1.0, 2.0]
    >>> parse_value("linspace(0, 1, 3)").tolist()
    [0.0, 0.5, 1.0]
    """
    match = _RANGE.match(text)
    if match:
        kind, args = match.groups()
        try:
            numbers = [float(a) for a in args.split(",")]
        except ValueError:
            raise UsageError(f"{text!r}: {kind} takes numbers, e.g. {kind}(0, 1, 5)") from None
        if kind == "linspace":
            if len(numbers) != 3:
                raise UsageError(f"{text!r}: linspace(start, stop, count)")
            return np.linspace(numbers[0], numbers[1], int(numbers[2]))
        if len(numbers) not in (2, 3):
            raise UsageError(f"{text!r}: arange(start, stop[, step])")
        return np.arange(*numbers)
    if text.endswith(".npy"):
        if not os.path.exists(text):
            raise UsageError(f"{text!r}: no such file")
        return np.asarray(np.load(text, allow_pickle=False), dtype=float)
    try:
        return np.asarray(json.loads(text), dtype=float)
    except (json.JSONDecodeError, ValueError, TypeError):
        raise UsageError(
            f"{text!r} is not a value: give JSON ([1, 2]), a .npy file or linspace(a, b, n)"
        ) from None


def parse_inputs(items: Sequence[str]) -> dict[str, np.ndarray] | np.ndarray:
    named: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            if len(items) == 1:
                return parse_value(item)
            raise UsageError(f"--input {item!r}: write name=VALUE when there are several inputs")
        named[name.strip()] = parse_value(value)
    return named


def _print_array(label: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _print_array(f"{label}[{key}]" if label else str(key), sub)
        return
    with np.printoptions(precision=6, suppress=True, threshold=200):
        print(f"{label}:\n{np.asarray(value)}" if label else np.asarray(value))


def _client(args: argparse.Namespace) -> Client:
    tls: TLS | bool | None = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = TLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    elif args.tls:
        tls = True
    return Client(args.address, token=args.token, timeout=args.timeout, tls=tls)


def _vectors(args: argparse.Namespace) -> dict[str, Any]:
    """The cotangent (vjp), tangents (jvp) or vector (hvp) of a command."""
    if args.command == "vjp":
        return {"cotangent": parse_value(args.cotangent)}
    if args.command == "jvp":
        return {"tangents": parse_inputs(args.tangent)}
    if args.command == "hvp":
        return {"vector": parse_inputs(args.vector)}
    return {}


def cmd_compute(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input)
    vectors = _vectors(args)
    with _client(args) as client:
        result = client.compute(
            args.function,
            inputs,
            [args.command],
            wrt=args.wrt or None,
            batched=args.batched,
            dtype=args.dtype,
            **vectors,
            verify=args.verify,
        )
    _print_array("", result[args.command])
    for warning in result.metadata.warnings:
        print(f"note: {warning}", file=sys.stderr)
    cert = result.metadata.certificate
    if cert is not None:
        print(
            f"note: certified: forward and reverse mode agree to {cert.disagreement:.1e} "
            f"(tolerance {cert.tolerance:.1e})",
            file=sys.stderr,
        )
    return 0


def claim_files(given: list[str]) -> Any:
    """``--grad-file F.npy`` (one array) or ``--grad-file x=F.npy ...`` (by input)."""
    if not given:
        return None
    named = [g.partition("=") for g in given]
    if len(given) == 1 and not named[0][1]:
        return _load_npy(given[0])
    if not all(sep for _, sep, _ in named):
        raise SystemExit("gradserve check: with several claim files, write NAME=F.npy for each")
    return {name: _load_npy(path) for name, _, path in named}


def _load_npy(path: str) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gradserve check: cannot read {path}: {exc}") from None


def cmd_check(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input)
    with _client(args) as client:
        report = client.check(
            args.function,
            inputs,
            wrt=args.wrt or None,
            grad=args.grad if args.grad is not None else claim_files(args.grad_file),
            jacobian=args.jacobian if args.jacobian else claim_files(args.jacobian_file),
            hessian=args.hessian if args.hessian else claim_files(args.hessian_file),
            order=args.order,
            atol=args.atol,
            rtol=args.rtol,
            eps=args.eps,
            batched=args.batched,
        )
    print(report.message)
    return 0 if report.passed else 1


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.server_info()
    print(f"gradserve {info.version} at {client.address}: {info.workers} workers ({info.device})")
    for name, value in sorted(info.limits.items()):
        print(f"  {name} = {value}")
    for fn in info.registered_functions:  # the operator's, called as fn="@NAME"
        doc = fn.doc.splitlines()[0] if fn.doc else ""
        print(f"  @{fn.name}({', '.join(fn.inputs)})" + (f": {doc}" if doc else ""))
    return 0


def cmd_serve(argv: Sequence[str]) -> int:
    try:
        from gradserve_server.main import main as serve_main
    except ImportError:
        print(
            "gradserve serve needs the server: pip install gradserve-server (see the README)",
            file=sys.stderr,
        )
        return 2
    serve_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradserve", description=__doc__)
    parser.add_argument("--address", default=None, help="host:port (default $GRADSERVE_ADDRESS)")
    parser.add_argument("--token", default=None, help="bearer token (default $GRADSERVE_TOKEN)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per call")
    _add_tls_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server (options: gradserve serve --help)")
    for op, what in _OP_HELP.items():
        p = sub.add_parser(op, help=what)
        p.add_argument("function")
        p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE")
        p.add_argument("--wrt", action="append", default=[])
        p.add_argument("--batched", action="store_true")
        p.add_argument("--dtype", choices=list(DTYPES), default=None)
        if op == "vjp":
            p.add_argument(
                "--cotangent", required=True, metavar="VALUE", help="shaped like the output"
            )
        elif op in ("jvp", "hvp"):
            flag = "--tangent" if op == "jvp" else "--vector"
            p.add_argument(
                flag, action="append", required=True, metavar="[NAME=]VALUE",
                help="one per wrt input, shaped like it",
            )  # fmt: skip
        p.add_argument(
            "--verify",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="certify the answer by a second AD route (default: where it is cheap)",
        )
        p.set_defaults(handler=cmd_compute)
    p = sub.add_parser("check", help="check derivatives; exits 1 when the check fails")
    p.add_argument("function")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--wrt", action="append", default=[])
    p.add_argument("--grad", default=None, help="claimed gradient, e.g. '4 * x'")
    p.add_argument("--jacobian", default=None)
    p.add_argument("--hessian", default=None)
    p.add_argument("--order", type=int, default=1)
    p.add_argument("--atol", type=float, default=None)
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--batched", action="store_true")
    # numeric claims: derivatives computed elsewhere, saved with numpy.save
    for kind in ("grad", "jacobian", "hessian"):
        p.add_argument(
            f"--{kind}-file", action="append", default=[], metavar="[NAME=]F.npy",
            help=f"claimed {kind} values (one per point with --batched); NAME= per input",
        )  # fmt: skip
    p.set_defaults(handler=cmd_check)
    p = sub.add_parser("info", help="server version, workers and limits")
    p.set_defaults(handler=cmd_info)
    _add_job_commands(sub)
    return parser


_OP_HELP = {
    "value": "print FUNCTION at the inputs",
    "grad": "print the gradient of a scalar FUNCTION",
    "jacobian": "print the Jacobian of FUNCTION",
    "hessian": "print the Hessian of a scalar FUNCTION",
    "vjp": "print cotangent^T J (vector-Jacobian product) per input",
    "jvp": "print J tangent (Jacobian-vector product), shaped like the output",
    "hvp": "print H vector (Hessian-vector product) per input",
}


def _add_tls_flags(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--tls", action="store_true", help="use TLS with the system's CAs (implied by --tls-*)"
    )
    parser.add_argument(
        "--tls-ca",
        default=env("GRADSERVE_TLS_CA"),
        metavar="PEM",
        help="CA bundle that signed the server's certificate (default $GRADSERVE_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=env("GRADSERVE_TLS_CERT"),
        metavar="PEM",
        help="client certificate, for mutual TLS (default $GRADSERVE_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=env("GRADSERVE_TLS_KEY"),
        metavar="PEM",
        help="client key of --tls-cert (default $GRADSERVE_TLS_KEY)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=env("GRADSERVE_TLS_SERVER_NAME"),
        metavar="NAME",
        help="name to verify in the server's certificate, when not the address's host "
        "(default $GRADSERVE_TLS_SERVER_NAME)",
    )


def _add_job_commands(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job file (YAML or JSON); prints the job id")
    p.add_argument("job_file", metavar="JOB.yaml")
    p.add_argument("--wait", action="store_true", help="wait, showing progress, then write results")
    p.add_argument(
        "--output", "-o", default=None, metavar="DIR", help="where --wait writes results"
    )
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--name", default=None, help="override the job's name")
    p.set_defaults(handler=cmd_submit)
    p = sub.add_parser("jobs", help="list jobs, or the status, results, cancel or delete of one")
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    q = jobs.add_parser("list", help="jobs, newest first")
    q.add_argument("--state", action="append", default=None, help="only jobs in this state")
    q.set_defaults(handler=cmd_jobs_list)
    for name, handler, what in (
        ("status", cmd_jobs_status, "a job's state, progress and errors"),
        ("cancel", cmd_jobs_cancel, "cancel a job"),
        ("delete", cmd_jobs_delete, "delete a job and its results (cancels it if running)"),
        ("wait", cmd_jobs_wait, "wait for a job to end, showing progress"),
        ("results", cmd_jobs_results, "write a job's results: .npz per task + summary.json"),
    ):
        q = jobs.add_parser(name, help=what)
        q.add_argument("job_id", metavar="ID")
        if name == "results":
            q.add_argument("--output", "-o", default=None, metavar="DIR")
        q.set_defaults(handler=handler)


def _print_status(status: JobStatus) -> None:
    print(
        f"{status.id}  {status.state}  {status.tasks_done}/{status.tasks_total} tasks "
        f"({status.tasks_failed} failed)  {status.points_done}/{status.points_total} points"
        + (f"  {status.name}" if status.name else "")
    )
    for error in status.errors:
        first = error.message.splitlines()[0] if error.message else ""
        print(f"  task {error.task_index} ({error.task_id}): {error.code}: {first}")


def _write_results(client: Client, job_id: str, output: str | None) -> None:
    from gradserve.jobexport import write_results

    job = client.job(job_id)
    path = write_results(job.status(), job.results(), output or job_id)
    print(f"results written to {path.parent}", file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.submit(args.job_file, idempotency_key=args.idempotency_key, name=args.name)
        print(job.id, flush=True)
        if not args.wait:
            return 0
        status = job.wait(progress=True)
        _write_results(client, job.id, args.output)
    return 0 if status.state == "succeeded" else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for status in client.jobs(args.state):
            _print_status(status)
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_status(client.job(args.job_id).status())
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_status(client.job(args.job_id).cancel())
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.delete_job(args.job_id)
    print(f"deleted {status.id} (it was {status.state}) and its results")
    return 0


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.job(args.job_id).wait(progress=True)
    _print_status(status)
    return 0 if status.state == "succeeded" else 1


def cmd_jobs_results(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _write_results(client, args.job_id, args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"gradserve {args.command}: {exc}", file=sys.stderr)
        return 2
    except InvalidSpecError as exc:
        print(f"gradserve {args.command}: invalid function\n{exc.message}", file=sys.stderr)
        return 2
    except GradserveError as exc:
        request = f" (request {exc.request_id})" if exc.request_id else ""
        print(
            f"gradserve {args.command}: {exc.code or 'error'}: {exc.message}{request}",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
