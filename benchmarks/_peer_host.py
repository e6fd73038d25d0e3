"""The peers of `benchmarks/peers.py`: what a user would build instead of gradserve.

Run as a child process by ``peers.py`` (never on its own in the benchmark run):

    python benchmarks/_peer_host.py fastapi --port P --threads T
    python benchmarks/_peer_host.py serve --port P --threads T --temp-dir D

Both serve the same two routes on 127.0.0.1, written the way their users write them:

- ``POST /grad`` with JSON ``{"x": [10 floats]}`` returns ``{"grad": [...]}``:
  ``torch.func.grad`` of ``dot(x, x)``.
- ``POST /grad_batch?dim=D`` with the points as raw little-endian float64 bytes
  (``application/octet-stream``, row-major ``(n, D)``) returns the gradients the same
  way: ``torch.func.vmap(torch.func.grad(rosenbrock))``. Raw bytes, not JSON, because
  16 MB of floats as JSON text is what nobody serving arrays keeps for long.

``fastapi`` is one uvicorn process (its defaults: one worker; the loop and HTTP parser
uvicorn picks), torch with T intra-op threads. ``serve`` is a Ray Serve application on
a Ray of its own (``ray.init`` here, T CPUs): one replica of a deployment that wraps
the same FastAPI routes with ``@serve.ingress`` (Ray Serve's documented FastAPI
pattern), with ``num_cpus=T`` and T torch threads, reached through Serve's HTTP proxy.
One replica, because one big request goes to one replica whatever their number.

The host prints ``READY`` once it serves, and stops (Serve and its Ray too) when its
standard input closes, on SIGTERM, or after ``--max-seconds``, whichever comes first,
so a benchmark that dies leaves nothing running.
"""

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

# Module level, and no `from __future__ import annotations`: Ray Serve pickles the
# deployment by value, and FastAPI needs the routes' annotations as objects to tell
# a JSON body from a query parameter in the replica.


class Point(BaseModel):
    x: list[float]


class Grad(BaseModel):
    grad: list[float]


def dot_xx(x: torch.Tensor) -> torch.Tensor:
    return torch.dot(x, x)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


_UNARY = torch.func.grad(dot_xx)
_BATCH = torch.func.vmap(torch.func.grad(rosenbrock))


def unary_grad(x: list[float]) -> list[float]:
    out: list[float] = _UNARY(torch.tensor(x, dtype=torch.float64)).tolist()
    return out


def batch_grad(body: bytes, dim: int) -> bytes:
    points = np.frombuffer(body, dtype="<f8").reshape(-1, dim)
    out: bytes = _BATCH(torch.from_numpy(points.copy())).numpy().astype("<f8").tobytes()
    return out


def make_fastapi_app() -> Any:
    """The plain FastAPI app: module-level route functions."""
    app = FastAPI()

    @app.post("/grad")
    def grad(req: Point) -> Grad:
        return Grad(grad=unary_grad(req.x))

    @app.post("/grad_batch")
    async def grad_batch(request: Request, dim: int) -> Response:
        body = await request.body()
        out = await run_in_threadpool(batch_grad, body, dim)
        return Response(content=out, media_type="application/octet-stream")

    return app


def make_serve_app(threads: int) -> Any:
    """The Ray Serve app: the same routes as methods of an ingress deployment."""
    from ray import serve

    app = FastAPI()

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": threads})
    @serve.ingress(app)
    class GradDeployment:
        def __init__(self) -> None:
            torch.set_num_threads(threads)

        @app.post("/grad")
        def grad(self, req: Point) -> Grad:
            return Grad(grad=unary_grad(req.x))

        @app.post("/grad_batch")
        async def grad_batch(self, request: Request, dim: int) -> Response:
            body = await request.body()
            out = await run_in_threadpool(batch_grad, body, dim)
            return Response(content=out, media_type="application/octet-stream")

    return GradDeployment.bind()  # type: ignore[attr-defined]


def _stop_when(stop: Callable[[], None], max_seconds: float) -> None:
    """Call ``stop`` once: on EOF of stdin (the parent went away), or after max_seconds."""
    timer = threading.Timer(max_seconds, stop)
    timer.daemon = True
    timer.start()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop()

    threading.Thread(target=watch_stdin, daemon=True).start()


def run_fastapi(port: int, threads: int, max_seconds: float) -> None:
    import uvicorn

    torch.set_num_threads(threads)
    config = uvicorn.Config(
        make_fastapi_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    _stop_when(stop, max_seconds)

    # uvicorn has no "started" callback; announce from a thread once it says it is up
    def announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            print("READY", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()


def run_serve(port: int, threads: int, temp_dir: str, max_seconds: float) -> None:
    import ray
    from ray import serve

    done = threading.Event()
    _stop_when(done.set, max_seconds)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    ray.init(
        num_cpus=threads,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_serve_app(threads), name="grad", route_prefix="/")
        print("READY", flush=True)
        done.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description="a peer of gradserve, for benchmarks/peers.py")
    p.add_argument("kind", choices=("fastapi", "serve"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--temp-dir", help="Ray's temp dir (serve only)")
    p.add_argument("--max-seconds", type=float, default=1800.0)
    args = p.parse_args()
    os.environ.pop("RAY_ADDRESS", None)  # a Ray of its own, never one named outside
    if args.kind == "fastapi":
        run_fastapi(args.port, args.threads, args.max_seconds)
    else:
        if not args.temp_dir:
            p.error("serve needs --temp-dir")
        run_serve(args.port, args.threads, args.temp_dir, args.max_seconds)


if __name__ == "__main__":
    main()
