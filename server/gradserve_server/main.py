"""``gradserve serve``: start (or join) Ray, warm the actor pool, serve gRPC until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from gradserve.v1 import gradserve_pb2 as pb
from gradserve_server import logs, metrics, network
from gradserve_server.auth import Authenticator
from gradserve_server.config import ServerConfig, parse_config
from gradserve_server.fastlane import FastLane
from gradserve_server.interceptor import CallInterceptor
from gradserve_server.jobs import JobManager
from gradserve_server.pool import ActorPool
from gradserve_server.service import ComputeService
from gradserve_server.servicer import GradientServicer, add_to_server

log = logging.getLogger("gradserve.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GradientService"].full_name
DRAIN_SECONDS = 30.0
# How often the pool compares itself with the cluster's CPUs.
FOLLOW_SECONDS = 5.0


def _start_ray(config: ServerConfig) -> str:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if config.ray_address:
        _adopt_ray_token()
        ray.init(address=config.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        return config.ray_address
    kwargs: dict[str, Any] = {}
    if config.object_store_bytes:
        kwargs["object_store_memory"] = config.object_store_bytes
    ray.init(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
        **kwargs,
    )
    return "embedded"


def _adopt_ray_token() -> None:
    """Ray clusters started with token auth need the token in the driver's environment."""
    token_file = os.environ.get("GRADSERVE_RAY_TOKEN_FILE")
    if token_file and Path(token_file).exists() and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = Path(token_file).read_text().strip()
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _make_actor_factory(config: ServerConfig, size: int) -> Any:
    import ray

    from gradserve_workers.actor import GradActor

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    options: dict[str, Any] = {
        "num_cpus": min(1.0, cpus / size),
        "max_restarts": 0,
        "max_concurrency": 1,
        "scheduling_strategy": "SPREAD",
    }
    if config.device == "cuda":
        options["num_gpus"] = min(1.0, float(ray.cluster_resources().get("GPU", 1.0)) / size)
    remote_cls = ray.remote(GradActor).options(**options)
    return lambda: remote_cls.remote(
        device=config.device, threads=1, functions=tuple(config.functions), keep_heap=True
    )


def _make_express_factory(config: ServerConfig) -> Any:
    """Express actors (see pool.py) hold no CPU of Ray's: they run small calls in the
    gaps the regular workers leave, and stop any call after --express-seconds."""
    import ray

    from gradserve_workers.actor import GradActor

    options = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1}
    remote_cls = ray.remote(GradActor).options(**options)
    seconds = config.workers.express_seconds
    return lambda: remote_cls.remote(
        device=config.device, threads=1, express_seconds=seconds, keep_heap=True
    )


async def serve(config: ServerConfig, started: asyncio.Event | None = None) -> None:
    # the network settings first: a mistake there fails before Ray starts
    credentials = network.server_credentials(config)
    auth = network.authenticator(config)
    network.guard_exposure(
        config,
        tls=credentials is not None,
        mutual=config.tls_client_ca is not None,
        tokens=auth is not None,
    )
    endpoint = network.serve_metrics(config)
    try:
        await _serve(config, credentials, auth, endpoint, started)
    finally:
        if endpoint is not None:
            endpoint.close()


async def _serve(
    config: ServerConfig,
    credentials: grpc.ServerCredentials | None,
    auth: Authenticator | None,
    endpoint: metrics.Endpoint | None,
    started: asyncio.Event | None,
) -> None:
    ray_address = _start_ray(config)
    import ray

    size = config.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pool = ActorPool(
        _make_actor_factory(config, size),
        size,
        _make_express_factory(config),
        express=config.workers.express_workers,
        express_seconds=config.workers.express_seconds,
        cancel_grace=config.workers.cancel_grace_s,
        channels=config.workers.channel,
    )
    await pool.start()
    if config.functions:  # what the workers loaded, for the server's validation
        from gradserve_workers import registry

        registry.install(await pool.workers[0].handle.functions.remote())
    service = ComputeService(config, pool)
    service.fast_lane = await FastLane.start(
        config.workers.fast_lane_elements, config.workers.fast_lane_s
    )
    jobs = _start_jobs(config, service)

    server = grpc.aio.server(
        interceptors=[CallInterceptor(auth)],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_to_server(GradientServicer(service, jobs, ray_address), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server,
    )  # fmt: skip
    listen = f"{config.host}:{config.port}"
    if credentials is not None:
        port = server.add_secure_port(listen, credentials)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"gradserve: cannot listen on {config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if endpoint is not None:
        endpoint.watch(pool, jobs)
        where = f"{config.metrics_host}:{endpoint.port}"
        print(f"gradserve: metrics on http://{where}/metrics", flush=True)
    print(
        f"gradserve: serving on {config.host}:{port} with {size} workers "
        f"({_describe_security(credentials is not None, config, auth)})",
        flush=True,
    )
    if jobs is not None:
        await jobs.start()
    follow = None
    if config.num_workers is None:  # one actor per CPU: nodes that join get actors too
        follow = asyncio.ensure_future(_follow_cluster(pool))
    if started is not None:
        started.set()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP re-reads the token file (and never ends the server, as by default)
    loop.add_signal_handler(signal.SIGHUP, auth.reload if auth else _nothing_to_reload)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %.0f s", DRAIN_SECONDS)
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if follow is not None:
        follow.cancel()
    await shut_down(server, jobs)
    if service.fast_lane is not None:
        service.fast_lane.close()
    ray.shutdown()
    print("gradserve: stopped", flush=True)


async def shut_down(server: Any, jobs: JobManager | None, drain_s: float = DRAIN_SECONDS) -> None:
    """Stop accepting calls and drain those in flight, then close the job store.

    Job runners stop and watches end while the calls drain (they would hold the drain
    and take workers from it); the store stays open until the last call is done."""
    draining = asyncio.ensure_future(server.stop(drain_s))
    await asyncio.sleep(0)  # the server stops accepting before anything else
    if jobs is not None:
        await jobs.halt()
    await draining
    if jobs is not None:
        await jobs.stop()


async def _follow_cluster(pool: ActorPool) -> None:
    """Grow the pool to the cluster's CPUs as Ray nodes join (``--scale worker=N``).

    A lost node needs nothing here: its actors' replacements wait in Ray for room.
    """
    import ray

    while True:
        await asyncio.sleep(FOLLOW_SECONDS)
        try:
            resources = await asyncio.to_thread(ray.cluster_resources)
        except Exception as error:  # the GCS is briefly unreachable: look again later
            log.warning("cannot read the cluster's resources: %s", error)
            continue
        started = pool.grow(int(resources.get("CPU", 0)))
        if started:
            log.info("the cluster grew: starting %d more workers", started)


def _nothing_to_reload() -> None:
    log.info("SIGHUP: no token file to re-read (--auth-token-file is not set)")


def _describe_security(tls: bool, config: ServerConfig, auth: Any) -> str:
    parts = ["mutual TLS" if tls and config.tls_client_ca else "TLS" if tls else "plaintext"]
    if auth is None:
        parts.append("no tokens")
    else:
        parts.append(f"tokens for {len(auth.tenants)} tenants")
    return ", ".join(parts)


def _start_jobs(config: ServerConfig, service: ComputeService) -> JobManager:
    return JobManager(config, service)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    logs.setup(config.log_level, config.log_format)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config))
    except network.SetupError as error:
        log.error("%s", error)
        print(f"gradserve serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
