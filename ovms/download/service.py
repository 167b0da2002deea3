"""The download service: requests become jobs, jobs run on download threads, every change is recorded.

One event loop owns the jobs and the SQLite store; each running job has one thread (at most
``max_parallel_downloads`` at once) that drives its hub and reports back with ``loop.call_soon_threadsafe``. The
bytes of every job move on one shared engine (``ovms.pull.engine.SharedEngine``): one pycurl multi handle whose
transfers in flight, across all jobs and all their files and ranges, never exceed ``max_connections``.

A job is keyed by what it fetches (hub, name, revision, precision, device,
layout, place): a request for a key that is queued, running or completed (and still on disk) gets that job's id
instead of a new one.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import pathlib
import shutil
import time

from ovms.download import schema
from ovms.download.hubs.base import BadName, CannotList, FetchTask, Plugin, Refused
from ovms.download.jobs import ACTIVE, STATE_DIR, Job, JobStore, now_iso
from ovms.download.plugins import default_plugins
from ovms.pull import convert
from ovms.pull.engine import SharedEngine
from ovms.pull.settings import from_environment
from ovms.pull.errors import InterruptedPull, PullError

log = logging.getLogger("ovms.download")

PROGRESS_POST_SECONDS = 0.2  # how often a download thread posts its byte count to the loop
PERSIST_SECONDS = 1.0  # how often a running job's progress is written to SQLite
CANCEL_WAIT_SECONDS = 30.0


class JobNotFound(Exception):
    pass


class Conflict(Exception):
    """A request that contradicts a job's state (HTTP 409)."""


@dataclasses.dataclass(eq=False)
class Control:
    """Between the loop and a job's download thread."""

    stop: str | None = None  # "canceled" | "shutdown": the thread stops at its next check
    current: int = 0
    total: int = 0
    posted: float = 0.0
    done: asyncio.Future | None = None  # resolved when the job's run ends (canceled, failed, completed)


class DownloadService:
    def __init__(self, models_dir: pathlib.Path, *, max_parallel_downloads: int = 4,
                 max_connections: int | None = None, plugins: dict[str, Plugin] | None = None) -> None:
        """``max_connections``: transfers in flight across all jobs (default OVMS_PULL_CONNECTIONS)."""
        self.models_dir = pathlib.Path(models_dir).expanduser().resolve()
        self.max_parallel_downloads = max(1, int(max_parallel_downloads))
        self.max_connections = max_connections
        self.engine: SharedEngine | None = None
        self.plugins = plugins if plugins is not None else default_plugins()
        self.jobs: dict[str, Job] = {}
        self.controls: dict[str, Control] = {}
        self.store: JobStore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._changed: asyncio.Event | None = None
        self._persisted: dict[str, float] = {}

    # ---- life cycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.models_dir)
        self.executor = concurrent.futures.ThreadPoolExecutor(self.max_parallel_downloads,
                                                              thread_name_prefix="ovms-download")
        settings = from_environment()
        most = self.max_connections or settings.connections
        self.engine = SharedEngine(min(settings.initial_connections, most), most)
        resumed = []
        for job in self.store.load_all():
            self.jobs[job.id] = job
            if job.status in ACTIVE:
                job.status = "queued"
                self.store.save(job)
                resumed.append(job)
        if resumed:
            log.info("Resuming %d unfinished job(s) from %s: %s", len(resumed), self.store.path,
                     ", ".join(f"{j.model_name} ({j.id})" for j in resumed))
        for job in resumed:
            self._spawn(self._run_sequence([job], {}))
        log.info("Model download service: models in %s, at most %d downloads at once sharing at most %d "
                 "connections", self.models_dir, self.max_parallel_downloads, self.engine.most)

    async def close(self) -> None:
        """Stop running transfers (their jobs stay queued in the store and resume at the next start)."""
        for control in self.controls.values():
            control.stop = control.stop or "shutdown"
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        if self.store is not None:
            self.store.close()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- requests -------------------------------------------------------------------------------------------
    def resolve_download_path(self, download_path: str | None) -> pathlib.Path:
        loc = ("query", "download_path")
        if download_path is None:
            raise schema.ValidationFailed([schema.Problem(loc, "Field required", "missing")])
        base = (self.models_dir / download_path).resolve()
        try:
            relative = base.relative_to(self.models_dir)
        except ValueError:
            raise schema.ValidationFailed([schema.Problem(
                loc, f"download_path must stay inside the models directory {self.models_dir}", "path_escape",
                download_path)]) from None
        if relative.parts and relative.parts[0] == STATE_DIR:
            raise schema.ValidationFailed([schema.Problem(loc, f"{STATE_DIR} holds the service's own state",
                                                          "path_reserved", download_path)])
        return base

    async def list_models(self, body: bytes) -> dict:
        """One window of a hub's models (``POST /models/list``); raises ValidationFailed, Refused or a
        ListingError (501 a hub that cannot list, 401 refused credentials, 502 the hub failed)."""
        request = schema.validate(schema.ListRequest, _json_body(body))
        plugin = self.plugins[request["hub"]]
        try:
            credentials = _decode_credentials(request.get("override_credentials"))
        except ValueError as exc:
            raise schema.ValidationFailed([schema.Problem(("body", "override_credentials", str(exc)),
                                                          "Value should be base64-encoded UTF-8 text",
                                                          "base64_invalid")]) from None
        if not plugin.supports_listing:
            raise CannotList(f"Hub {plugin.name!r} cannot list models: {plugin.cannot_list_reason}.")
        if not plugin.available:
            raise Refused(f"Hub {plugin.name!r} is not available: {plugin.unavailable_reason}")
        # The hub's answer is awaited off the loop, on the default executor: a listing never waits for a download
        # thread.
        return await self.loop.run_in_executor(None, plugin.list_models, request.get("filters") or {},
                                               request["limit"], request["offset"], credentials)

    def submit(self, body: bytes, download_path: str | None) -> dict:
        """Validate a download request and start (or join) its jobs; raises ValidationFailed or Refused."""
        data = _json_body(body)
        problems: list[schema.Problem] = []
        try:
            base = self.resolve_download_path(download_path)
        except schema.ValidationFailed as exc:
            problems += exc.problems
            base = None
        try:
            request = schema.validate(schema.DownloadRequest, data)
        except schema.ValidationFailed as exc:
            raise schema.ValidationFailed(problems + exc.problems) from None
        prepared = []
        for i, model in enumerate(request["models"]):
            loc = ("body", "models", i)
            plugin = self.plugins[model["hub"]]
            try:
                credentials = _decode_credentials(model.get("override_credentials"))
            except ValueError as exc:
                problems.append(schema.Problem(loc + ("override_credentials", str(exc)),
                                               "Value should be base64-encoded UTF-8 text", "base64_invalid"))
                continue
            try:
                plugin.check(model)
            except BadName as exc:
                problems.append(schema.Problem(loc + ("name",), str(exc), "name_invalid", model["name"]))
                continue
            if base is None:
                continue
            final = plugin.output_dir(base, model).resolve()
            try:
                final.relative_to(self.models_dir)
            except ValueError:
                problems.append(schema.Problem(loc + ("name",), "the model would be written outside the models "
                                               "directory", "path_escape", model["name"]))
                continue
            prepared.append((plugin, model, credentials, final))
        if problems:
            raise schema.ValidationFailed(problems)
        job_ids, new_jobs = [], []
        for plugin, model, credentials, final in prepared:
            stored = {k: v for k, v in model.items() if k != "override_credentials" and v is not None}
            stored["download_path"] = str(base.relative_to(self.models_dir))
            key = self._key(plugin, model, final)
            job = self._existing(key)
            if job is None:
                job = Job.new(key, stored, str(final))
                self.jobs[job.id] = job
                self.store.save(job)
                new_jobs.append((job, credentials))
                log.info("Job %s: %s from %s into %s", job.id, job.model_name, job.hub, final)
            else:
                log.info("Request for %s joins job %s (%s)", model["name"], job.id, job.status)
            job_ids.append(job.id)
        if request["parallel_downloads"]:
            for job, credentials in new_jobs:
                self._spawn(self._run_sequence([job], {job.id: credentials}))
        elif new_jobs:
            self._spawn(self._run_sequence([j for j, _ in new_jobs], {j.id: c for j, c in new_jobs}))
        self._notify()
        return {"message": f"Started processing {len(job_ids)} model(s)", "job_ids": job_ids,
                "status": "processing"}

    @staticmethod
    def _key(plugin: Plugin, model: dict, final: pathlib.Path) -> str:
        config = model.get("config") or {}
        return json.dumps([model["hub"], model["name"], plugin.revision(model), config.get("precision"),
                           config.get("device"), config.get("cache_size"), bool(model.get("is_ovms")),
                           model.get("type"), str(final)])

    def _existing(self, key: str) -> Job | None:
        for job in self.jobs.values():
            if job.key != key:
                continue
            if job.status in ACTIVE:
                return job
            if job.status == "completed" and job.result and pathlib.Path(job.result["model_path"]).exists():
                return job  # answered from the models directory, not a byte fetched
        return None

    # ---- running a job ----------------------------------------------------------------------------------------
    def _staging(self, job: Job) -> pathlib.Path:
        return self.models_dir / STATE_DIR / "staging" / hashlib.sha1(job.key.encode()).hexdigest()[:16]

    async def _run_sequence(self, jobs: list[Job], credentials: dict[str, dict]) -> None:
        controls = []
        for job in jobs:
            control = Control(done=self.loop.create_future())
            self.controls[job.id] = control
            controls.append(control)
        try:
            for job, control in zip(jobs, controls):
                if control.stop is None:
                    await self._run(job, control, credentials.get(job.id, {}))
                if control.stop == "shutdown":
                    break
        finally:
            for job, control in zip(jobs, controls):
                if control.stop == "canceled" and job.status in ACTIVE:
                    self._finish(job, "canceled", error="Canceled by request.")
                    shutil.rmtree(self._staging(job), ignore_errors=True)
                self.controls.pop(job.id, None)
                if not control.done.done():
                    control.done.set_result(None)

    async def _run(self, job: Job, control: Control, credentials: dict) -> None:
        plugin = self.plugins[job.hub]
        base = self.models_dir / job.request["download_path"]
        task = FetchTask(request=job.request, credentials=credentials, base=base, staging=self._staging(job),
                         final=pathlib.Path(job.output_dir), stop_requested=lambda: control.stop,
                         on_progress=lambda done, total: self._progress_from_thread(job, control, done, total),
                         on_status=lambda status: self.loop.call_soon_threadsafe(self._set_status, job, status),
                         engine=self.engine)
        try:
            result = await self.loop.run_in_executor(self.executor, self._work, plugin, task, job, control)
        except InterruptedPull:
            if control.stop == "canceled":
                self._finish(job, "canceled", error="Canceled by request.")
                shutil.rmtree(task.staging, ignore_errors=True)
            # shutdown: the job stays queued in the store and resumes at the next start
            return
        except (PullError, Refused) as exc:
            log.error("Job %s (%s) failed: %s", job.id, job.model_name, exc)
            self._finish(job, "failed", error=str(exc))
            return
        except Exception as exc:  # a bug: the traceback goes to the log, the job says so
            log.exception("Job %s (%s) failed unexpectedly", job.id, job.model_name)
            self._finish(job, "failed", error=f"Internal error ({type(exc).__name__}: {exc}); see the service log.")
            return
        if control.stop == "canceled":
            log.info("Job %s finished before its cancel took effect", job.id)
        job.result = result
        if job.total == 0 or result.get("from_cache"):
            job.current = job.total = job.total or 0
        self._finish(job, "completed")
        shutil.rmtree(task.staging, ignore_errors=True)

    def _work(self, plugin: Plugin, task: FetchTask, job: Job, control: Control) -> dict:
        if control.stop:
            raise InterruptedPull(f"Job {job.id} stopped ({control.stop}) before it started.")
        self.loop.call_soon_threadsafe(self._set_status, job, "downloading")
        return plugin.fetch(task)

    def _progress_from_thread(self, job: Job, control: Control, done: int, total: int) -> None:
        control.current, control.total = done, total
        now = time.monotonic()
        if now - control.posted >= PROGRESS_POST_SECONDS or done >= total:
            control.posted = now
            self.loop.call_soon_threadsafe(self._progress, job, control.current, control.total)

    def _progress(self, job: Job, current: int, total: int) -> None:
        if job.status not in ACTIVE:
            return
        job.current, job.total = current, total
        job.version += 1
        now = time.monotonic()
        if now - self._persisted.get(job.id, 0.0) >= PERSIST_SECONDS:
            self._persisted[job.id] = now
            self.store.save(job)
        self._notify()

    def _set_status(self, job: Job, status: str) -> None:
        if job.status in ACTIVE:
            job.status = status
            job.version += 1
            self.store.save(job)
            self._notify()

    def _finish(self, job: Job, status: str, *, error: str | None = None) -> None:
        job.status = status
        job.error = error
        job.completion_time = now_iso()
        job.version += 1
        self.store.save(job)
        self._persisted.pop(job.id, None)
        log.info("Job %s (%s): %s%s", job.id, job.model_name, status, f" ({error})" if error else "")
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ---- queries and cancel ----------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"Job {job_id} not found")
        return job

    def jobs_of_model(self, model_name: str) -> list[Job]:
        found = [j for j in self.jobs.values() if j.model_name == model_name]
        if not found:
            raise JobNotFound(f"No jobs found for model {model_name}")
        return found

    def results(self) -> list[dict]:
        return [{"job_id": j.id, "model_name": j.model_name, "hub": j.hub, "operation_type": j.operation_type,
                 "status": "success", "model_path": (j.result or {}).get("model_path", j.output_dir),
                 "is_ovms": (j.result or {}).get("is_ovms", False), "completion_time": j.completion_time}
                for j in self.jobs.values() if j.status == "completed"]

    async def cancel(self, job_id: str) -> Job:
        """Stop the job's transfer, remove its partial files, mark it canceled; returns when that is done."""
        job = self.job(job_id)
        if job.status not in ACTIVE:
            raise Conflict(f"Job {job_id} is {job.status}; only queued or running jobs can be canceled")
        control = self.controls.get(job_id)
        if control is None:  # not scheduled in this process (should not happen): mark it all the same
            self._finish(job, "canceled", error="Canceled by request.")
            return job
        control.stop = "canceled"
        await asyncio.wait_for(asyncio.shield(control.done), CANCEL_WAIT_SECONDS)
        return job

    def plugins_answer(self) -> dict:
        listed = [p.describe() for p in self.plugins.values()]
        listed += [p.describe() for p in converter_plugins()]
        downloaders = [p for p in listed if p["type"] == "downloader"]
        converters = [p for p in listed if p["type"] == "converter"]
        return {"available_plugins": {"downloader": downloaders, "converter": converters},
                "total_count": len(listed), "available_count": sum(1 for p in listed if p["available"]),
                "activation_instructions": "A hub or converter marked unavailable says in unavailable_reason what "
                                           "it needs (a package on the service's PATH, settings in its "
                                           "environment or flags); restart the service once it is there."}


def converter_plugins() -> list[Plugin]:
    """optimum-intel's export, available exactly when ``optimum-cli`` is on the service's PATH (asked each time)."""
    available = convert.optimum_available()
    return [Plugin("openvino", type="converter", description="Conversion of transformers-format Hugging Face "
                   "models to OpenVINO IR with optimum-intel (optimum-cli export openvino; is_ovms: true, weight "
                   "format from config.precision)", available=available,
                   unavailable_reason=None if available else "optimum-cli is not on PATH. " + convert.INSTALL_HINT)]


def _json_body(body: bytes):
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise schema.ValidationFailed([schema.Problem(("body",), f"JSON decode error: {exc}", "json_invalid")]) \
            from None


def _decode_credentials(raw: dict | None) -> dict[str, str]:
    """override_credentials values are base64 strings (as the microservice takes them); ValueError names the key."""
    out = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError(key) from None
    return out

