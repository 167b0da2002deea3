"""Composition root: the only module that knows the concrete backends and wires every layer together."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import signal

from aiohttp import web

from ovms import heap
from ovms.config import ModelConfig
from ovms.dataplane import DataPlane
from ovms.errors import ConfigError
from ovms.management import ConfigManager
from ovms.metrics import Metrics
from ovms.registry import Registry
from ovms.transport import grpc_server, rest_native, rest_server

log = logging.getLogger("ovms.server")


@dataclasses.dataclass(slots=True)
class ServerSettings:
    """Where to listen. A port of None disables that transport; 0 picks a free port (tests)."""

    grpc_port: int | None = None
    rest_port: int | None = None
    grpc_bind_address: str = "0.0.0.0"
    rest_bind_address: str = "0.0.0.0"
    grpc_workers: int = 1
    rest_workers: int | None = None
    poll_seconds: float = 0  # --file_system_poll_wait_seconds; 0: no polling
    metrics_families: frozenset[str] = frozenset()  # empty: /metrics off
    reuse_port: bool = False  # several processes share the gRPC port (--grpc_workers)
    openai: object = None  # ovms.transport.openai_rest.OpenAISettings (API key, CORS) or None for defaults
    cache_dir: str | None = None  # --cache_dir: OpenVINO's compiled-model cache
    repository_cache: str | None = None  # --model_repository_cache: local copies of s3:// gs:// az:// models
    grpc_channel_arguments: tuple = ()  # --grpc_channel_arguments: (name, value) gRPC server options
    grpc_server: str = "grpcio"  # --grpc_server: grpcio (grpc.aio) or native (ovms.transport.grpc_native)
    rest_server: str = "native"  # --rest_server: native (KServe infer read off the socket, rest_native) or aiohttp


def _load_servable(config: ModelConfig, version: int, registry: Registry):
    """The backend for a configured model: classic OpenVINO models, GenAI graphs (LLM, embeddings, rerank), or
    a DAG pipeline (which calls the registry's models)."""
    if config.kind == "pipeline":
        from ovms.pipelines import Pipeline

        return Pipeline(config.pipeline, registry)
    if config.kind == "graph":
        from ovms.mediapipe import is_mediapipe_graph, load_mediapipe_servable

        if is_mediapipe_graph(config.graph_path):  # Python nodes and model nodes
            return load_mediapipe_servable(config, registry)
        from ovms.backends.genai import load_graph_servable

        return load_graph_servable(config)
    from ovms.backends.openvino_model import load_servable

    return load_servable(config, version)


def backend_versions() -> str:
    """Versions of the inference runtimes, for ``--version``."""
    from ovms.backends.openvino_model import runtime_version

    return f"OpenVINO backend {runtime_version()}"


class Server:
    """One process serving a registry over gRPC and REST on one event loop."""

    def __init__(self, settings: ServerSettings, models: list[ModelConfig] | None = None, *,
                 config_path: pathlib.Path | str | None = None) -> None:
        self.settings = settings
        from ovms.backends import cache
        from ovms.backends.openvino_model import prepare_bindings

        cache.configure(settings.cache_dir)
        prepare_bindings()  # here, in one thread, before models load in several
        self.registry = Registry(lambda config, version: _load_servable(config, version, self.registry))
        self.manager = ConfigManager(self.registry, config_path=config_path, models=models,
                                     on_change=self._models_changed, repository_cache=settings.repository_cache)
        self.metrics = Metrics(settings.metrics_families, gauges=self._gauges)
        self.dataplane = DataPlane(self.registry, reloader=self.manager.reload, metrics=self.metrics)
        self.dataplane.openai_settings = settings.openai  # read by the OpenAI routes
        self._poller: asyncio.Task | None = None
        self._grpc = None
        self._runner: web.AppRunner | None = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        if s.grpc_port is not None:
            self._grpc = grpc_server.create_server(self.dataplane, reuse_port=s.reuse_port,
                                                   channel_arguments=s.grpc_channel_arguments,
                                                   implementation=s.grpc_server)
            self.grpc_port = self._grpc.add_insecure_port(f"{s.grpc_bind_address}:{s.grpc_port}")
            if self.grpc_port == 0:
                raise OSError(f"cannot listen for gRPC on {s.grpc_bind_address}:{s.grpc_port}: the address is in "
                              "use or not local; choose another --port or --grpc_bind_address")
            await self._grpc.start()
            grpc_server.set_health(self._grpc, False)
        if s.rest_port is not None:
            # The drain has let requests finish before cleanup; what is left then is cut after 1 s.
            self._runner = web.AppRunner(rest_server.create_app(self.dataplane), access_log=None,
                                         handle_signals=False, shutdown_timeout=1.0)
            await self._runner.setup()
            if s.rest_server == "native":
                site = rest_native.FastRestSite(self._runner, s.rest_bind_address, s.rest_port,
                                                dataplane=self.dataplane, max_body=rest_server.MAX_BODY_BYTES)
            else:
                site = web.TCPSite(self._runner, s.rest_bind_address, s.rest_port, backlog=1024)
            await site.start()
            self.rest_port = site._server.sockets[0].getsockname()[1]
        log.info("Started gRPC server on %s:%s, REST server on %s:%s", s.grpc_bind_address, self.grpc_port,
                 s.rest_bind_address, self.rest_port)
        if s.rest_workers is not None and self.rest_port is not None:
            log.warning("--rest_workers %d is accepted as OVMS has it and not used: one event loop serves REST here, "
                        "with no thread pool to size", s.rest_workers)
        result = await self.manager.reload()
        if result.error is not None:
            raise ConfigError(result.error)
        self.dataplane.started = True
        if not result.changed:  # else the manager called it
            self._models_changed()
        elif self._grpc is not None:  # the manager's call came before the server counted as started
            grpc_server.set_health(self._grpc, self.dataplane.ready())
        if s.poll_seconds > 0:
            self._poller = asyncio.create_task(self.manager.poll(s.poll_seconds), name="ovms-config-poll")
        log.info("Server ready: %d model(s) configured, ready=%s", len(self.registry.models), self.dataplane.ready())

    def _gauges(self):
        """Current gauge values per model: (family, model name, {version: value})."""
        for model in self.registry.models.values():
            live = [e for e in model.versions.values() if e.servable is not None]
            yield "ovms_current_requests", model.name, {str(e.version): e.in_flight for e in live}
            for family, attribute in (("ovms_streams", "streams"), ("ovms_infer_req_queue_size", "nireq"),
                                      ("ovms_infer_req_active", "active")):
                yield family, model.name, {str(e.version): getattr(e.servable, attribute, 0) for e in live}
            for family, attribute in (("ovms_llm_kv_cache_usage", "kv_cache_usage"),
                                      ("ovms_llm_generated_tokens", "generated_tokens"),
                                      ("ovms_llm_draft_accepted_tokens", "draft_accepted_tokens")):  # GenAI servables
                if any(hasattr(e.servable, attribute) for e in live):
                    yield family, model.name, {str(e.version): getattr(e.servable, attribute, 0) for e in live}

    def _models_changed(self) -> None:
        # After a reload's loads and drained unloads (Registry.apply waits for both): what is loaded now goes
        # out of the collector's way, and what was unloaded is freed (ovms/heap.py).
        heap.settle()
        if self._grpc is not None:
            grpc_server.set_health(self._grpc, self.dataplane.ready())

    async def stop(self, grace: float = 5.0) -> None:
        self.dataplane.live_flag = False
        if self._poller is not None:
            self._poller.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.registry.close()
        self.manager.close()

    async def begin_drain(self) -> None:
        """Stop being ready (REST /v2/health/ready 503, gRPC health NOT_SERVING) and refuse new requests."""
        self.dataplane.drain.begin()
        if self._poller is not None:
            self._poller.cancel()
        if self._grpc is not None:
            grpc_server.set_health(self._grpc, False)

    async def run_until_signalled(self, *, drain_timeout: float = 30.0, on_drain=None) -> int:
        """Serve until SIGINT or SIGTERM, then drain: 0 when every request in flight finished, 1 when a second
        signal or ``drain_timeout`` cut them short."""
        signals: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        await self.start()
        first = await signals.get()
        drain = self.dataplane.drain
        await self.begin_drain()
        if on_drain is not None:
            on_drain()
        log.info("%s received: draining. Not ready any more, new requests get UNAVAILABLE (503); waiting up to "
                 "%g s for %d request(s) in flight (send the signal again to stop at once)",
                 signal.Signals(first).name, drain_timeout, drain.active)
        drained = asyncio.ensure_future(drain.wait(drain_timeout))
        second = asyncio.ensure_future(signals.get())
        await asyncio.wait((drained, second), return_when=asyncio.FIRST_COMPLETED)
        clean = drained.done() and drained.result()
        why = "a second signal" if second.done() else f"{drain_timeout:g} s passed"
        second.cancel()
        drained.cancel()
        if clean:
            log.info("Drained: every request in flight finished; shutting down")
        else:
            log.warning("Drain cut short (%s): %d request(s) still in flight are ended now", why, drain.active)
        await self.stop(grace=1.0 if clean else 0)
        return 0 if clean else 1
