"""Jobs and where they live: ``<models_dir>/.ovms_download/jobs.sqlite3``, so they survive restarts and kills.

A job is what the Model Download microservice calls a job (same fields, same statuses). Its ``request`` is the
validated model request *without* ``override_credentials``: a credential is held in memory by the running job
only and never written to disk or shown by the API.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sqlite3
import time
import uuid

STATE_DIR = ".ovms_download"
ACTIVE = ("queued", "downloading", "converting")
FINISHED = ("completed", "failed", "canceled")


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


@dataclasses.dataclass(eq=False)
class Job:
    id: str
    key: str  # what makes two requests the same model: hub, name, revision, precision, device, layout, place
    request: dict  # validated ModelRequest without credentials, plus "download_path"
    model_name: str
    hub: str
    output_dir: str
    status: str = "queued"
    operation_type: str = "download"
    model_type: str | None = None
    current: int = 0
    total: int = 0
    start_time: str = dataclasses.field(default_factory=now_iso)
    completion_time: str | None = None
    result: dict | None = None
    error: str | None = None
    version: int = 0  # bumped on every change the API can see (server-sent events wait on it)

    @classmethod
    def new(cls, key: str, request: dict, output_dir: str) -> "Job":
        return cls(id=str(uuid.uuid4()), key=key, request=request, model_name=request["name"], hub=request["hub"],
                   output_dir=output_dir, model_type=request.get("type"))

    @property
    def plugin(self) -> str:
        return self.hub

    def as_json(self) -> dict:
        """The microservice's job record."""
        pct = round(100.0 * self.current / self.total, 2) if self.total else (
            100.0 if self.status == "completed" else 0.0)
        return {"id": self.id, "operation_type": self.operation_type, "model_name": self.model_name,
                "hub": self.hub, "output_dir": self.output_dir, "status": self.status, "start_time": self.start_time,
                "plugin_name": self.plugin, "model_type": self.model_type,
                "progress": {"current": self.current, "total": self.total, "percentage": pct},
                "plugin": self.plugin, "completion_time": self.completion_time, "result": self.result,
                "error": self.error}


_COLUMNS = ("id", "key", "request", "model_name", "hub", "output_dir", "status", "operation_type", "model_type",
            "current", "total", "start_time", "completion_time", "result", "error")


class JobStore:
    """SQLite table of jobs; used from the event loop thread only (the download threads report through it)."""

    def __init__(self, models_dir: pathlib.Path) -> None:
        directory = models_dir / STATE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "jobs.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, key TEXT, request TEXT, "
                        "model_name TEXT, hub TEXT, output_dir TEXT, status TEXT, operation_type TEXT, "
                        "model_type TEXT, current INTEGER, total INTEGER, start_time TEXT, completion_time TEXT, "
                        "result TEXT, error TEXT, seq INTEGER)")
        self.db.execute("CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key)")

    def close(self) -> None:
        self.db.close()

    def save(self, job: Job) -> None:
        values = [getattr(job, c) for c in _COLUMNS]
        values[2] = json.dumps(job.request, sort_keys=True)
        values[13] = json.dumps(job.result) if job.result is not None else None
        self.db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}, seq) VALUES ({', '.join('?' * len(_COLUMNS))}, "
                        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)) ON CONFLICT(id) DO UPDATE SET "
                        + ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS[1:]), values)

    def load_all(self) -> list[Job]:
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY seq").fetchall()
        jobs = []
        for row in rows:
            data = dict(zip(_COLUMNS, row))
            data["request"] = json.loads(data["request"])
            data["result"] = json.loads(data["result"]) if data["result"] else None
            jobs.append(Job(**data))
        return jobs
