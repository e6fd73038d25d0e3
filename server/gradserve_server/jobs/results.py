"""A finished task as GetJobResults sends it: a header, then its arrays in pieces.

The header's tensors carry dtype and shape only; each output's bytes follow as
TensorPiece messages read straight from the chunk files in order (concatenating C-order
chunks along the point axis is concatenating their bytes), so the server holds one
piece at a time however large the task's results are.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from gradserve.results import OP_NAMES
from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server.encoding import describe_certificate, describe_execution, merged_routes
from gradserve_server.jobs.files import NpyReader
from gradserve_server.jobs.rows import ChunkRow, TaskRow
from gradserve_server.streams import STREAM_PIECE_BYTES, Later

_DTYPES = {"float32": pb.DTYPE_FLOAT32, "float64": pb.DTYPE_FLOAT64}


def build_outputs(chunks: Sequence[ChunkRow]) -> list[dict[str, Any]]:
    """The task's output manifest: per (op, key) its dtype, whole shape and files."""
    outputs: dict[tuple[str, str], dict[str, Any]] = {}
    for chunk in chunks:
        for entry in chunk.files or []:
            out = outputs.setdefault(
                (entry["op"], entry["key"]),
                {"op": entry["op"], "key": entry["key"], "dtype": entry["dtype"],
                 "shape": list(entry["shape"]), "files": [], "rows": 0},
            )  # fmt: skip
            out["files"].append(entry["file"])
            out["rows"] += entry["shape"][0] if entry["shape"] else 1
    for out in outputs.values():
        rows = out.pop("rows")
        if len(chunks) > 1:  # batched: the chunks stack along the point axis
            out["shape"][0] = rows
    return list(outputs.values())


def build_metadata(
    chunks: Sequence[ChunkRow], row: TaskRow, batched: bool, keep_unconnected: bool
) -> pb.ComputeMetadata:
    """How the task ran, as a unary call's metadata would say it."""
    infos = [c.info or {} for c in chunks]
    first = infos[0] if infos else {}
    unconnected: list[str] = list(first.get("unconnected", [])) if keep_unconnected else []
    for info in infos[1:]:
        unconnected = [n for n in unconnected if n in info.get("unconnected", [])]
    meta = pb.ComputeMetadata(
        unconnected=unconnected,
        out_shape=list(first.get("out_shape", [])),
        chunks=len(infos),
        workers=len({i.get("actor", "") for i in infos}),
        compute_seconds=sum(float(i.get("seconds", 0.0)) for i in infos),
        wall_seconds=max(0.0, time.time() - row.started_at) if row.started_at else 0.0,
        jacobian_mode=first.get("jacobian_mode") or "",
        points=row.points,
    )
    vmapped = all(i.get("vmapped", True) for i in infos) if batched and infos else None
    routes = merged_routes(i.get("routes", []) for i in infos)
    describe_execution(meta, vmapped, unconnected, routes)
    describe_certificate(meta, [i.get("certificate") for i in infos])
    return meta


def header(row: TaskRow, job_cancelled: bool) -> pb.TaskResult:
    """The header of a finished task (or of one a cancelled job never finished)."""
    msg = pb.TaskResult(task_index=row.idx, task_id=row.task_id)
    if row.state == "failed":
        msg.error.CopyFrom(
            pb.TaskError(
                task_index=row.idx,
                task_id=row.task_id,
                code=row.error_code or "UNKNOWN",
                message=row.error_message or "",
            )
        )
        return msg
    if row.state != "succeeded":
        reason = (
            "the job was cancelled before this task finished"
            if job_cancelled
            else "the job ended before this task finished"
        )
        msg.error.CopyFrom(
            pb.TaskError(task_index=row.idx, task_id=row.task_id, code="CANCELLED", message=reason)
        )
        return msg
    results: dict[str, pb.OpResult] = {}
    for out in row.outputs or []:
        result = results.get(out["op"])
        if result is None:
            result = results[out["op"]] = pb.OpResult(op=OP_NAMES[out["op"]])
        first, _, second = out["key"].partition(",")
        result.outputs.append(
            pb.Output(
                input=first,
                input2=second,
                tensor=pb.Tensor(dtype=_DTYPES[out["dtype"]], shape=out["shape"]),
            )
        )
    msg.results.extend(results.values())
    if row.report is not None:
        msg.check.CopyFrom(pb.CheckReport.FromString(row.report))
    if row.metadata is not None:
        msg.metadata.CopyFrom(pb.ComputeMetadata.FromString(row.metadata))
    return msg


def _slot_files(row: TaskRow, task_dir: Path) -> list[list[Path]]:
    """Per slot (in header order, grouped by op as the header groups them), its files."""
    order: list[str] = []
    for out in row.outputs or []:
        if out["op"] not in order:
            order.append(out["op"])
    return [
        [task_dir / name for name in out["files"]]
        for op in order
        for out in row.outputs or []
        if out["op"] == op
    ]


async def stream_task(
    row: TaskRow, task_dir: Path, job_cancelled: bool
) -> AsyncIterator[pb.TaskResultPart | Later]:
    """The task's header, then its arrays' pieces, each read only when the stream has
    room for it (:class:`~gradserve_server.streams.Later`)."""
    yield pb.TaskResultPart(header=header(row, job_cancelled))
    if row.state != "succeeded":
        return
    for slot, paths in enumerate(_slot_files(row, task_dir)):
        offset = 0
        for path in paths:
            reader = await asyncio.to_thread(NpyReader, path)
            try:
                for start in range(0, reader.nbytes, STREAM_PIECE_BYTES):
                    # read once the stream has room for it (streams.send_paced)
                    yield Later(functools.partial(_read_piece, reader, slot, offset + start))
                offset += reader.nbytes
            finally:
                reader.close()


async def _read_piece(reader: NpyReader, slot: int, offset: int) -> pb.TaskResultPart:
    data = await asyncio.to_thread(reader.next_piece, STREAM_PIECE_BYTES)
    return pb.TaskResultPart(piece=pb.TensorPiece(slot=slot, offset=offset, data=data))
