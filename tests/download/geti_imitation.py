"""A local imitation of the Intel Geti REST API, the part the Model Download microservice's Geti plugin uses.

Under ``/api/v1/organizations/{org}/workspaces/{ws}``, every request with ``x-api-key: <token>`` (else 401):

- ``GET /projects``: ``{"projects": [{"id", "name"}]}``
- ``GET /projects/{p}/model_groups/{g}``: ``{"id", "name", "models": [{"id", "name", "version"}]}``
- ``GET /projects/{p}/model_groups/{g}/models/{m}/export``: the base model's zip
- ``GET /projects/{p}/model_groups/{g}/models/{m}/optimized_models/{o}/export?model_only=``: the optimized
  model's zip (``model_only=false`` adds the example code directory)

Unknown ids answer 404 as Geti does. Faults: ``drop_next`` closes the connection mid-body for that many export
responses; ``corrupt_next`` serves a zip with one member's bytes altered (its CRC no longer matches).
"""
from __future__ import annotations

import dataclasses
import io
import zipfile

from aiohttp import web

from tests.pull.hub_imitation import BackgroundApps


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


@dataclasses.dataclass
class GetiModel:
    id: str
    name: str
    files: dict[str, bytes]
    optimized: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)


class GetiImitation(BackgroundApps):
    thread_name = "geti imitation"

    def __init__(self, *, organization: str = "org1", workspace: str = "ws1", token: str = "geti-pat") -> None:
        super().__init__()
        self.organization, self.workspace, self.token = organization, workspace, token
        self.projects: dict[str, dict] = {}  # id -> {"name", "groups": {gid: {"name", "models": [GetiModel]}}}
        self.requests: list[dict] = []
        self.drop_next = 0
        self.corrupt_next = 0
        self.url = ""

    def add_model(self, project: str, group: str, model: GetiModel) -> None:
        p = self.projects.setdefault(project, {"name": f"project {project}", "groups": {}})
        p["groups"].setdefault(group, {"name": f"group {group}", "models": []})["models"].append(model)

    def _model(self, request: web.Request) -> GetiModel | None:
        group = self.projects.get(request.match_info["p"], {}).get("groups", {}).get(request.match_info["g"])
        return next((m for m in (group or {}).get("models", []) if m.id == request.match_info["m"]), None)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "key": request.headers.get("x-api-key")})
        m = request.match_info
        if m.get("org") != self.organization or m.get("ws") != self.workspace:
            return web.json_response({"message": "Organization or workspace not found"}, status=404)
        if request.headers.get("x-api-key") != self.token:
            return web.json_response({"message": "Unauthorized"}, status=401)
        return await handler(request)

    async def _projects(self, request: web.Request) -> web.Response:
        return web.json_response({"projects": [{"id": k, "name": v["name"]} for k, v in self.projects.items()]})

    async def _group(self, request: web.Request) -> web.Response:
        group = self.projects.get(request.match_info["p"], {}).get("groups", {}).get(request.match_info["g"])
        if group is None:
            return web.json_response({"message": "Model group not found"}, status=404)
        return web.json_response({"id": request.match_info["g"], "name": group["name"], "models": [
            {"id": m.id, "name": m.name, "version": i + 1} for i, m in enumerate(group["models"])]})

    async def _zip(self, request: web.Request, files: dict[str, bytes]) -> web.StreamResponse:
        body = make_zip(files)
        if self.corrupt_next:
            self.corrupt_next -= 1
            data = next(iter(files.values()))
            at = body.find(data)
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        resp = web.StreamResponse(headers={"Content-Type": "application/zip",
                                           "Content-Disposition": "attachment; filename=model.zip"})
        resp.content_length = len(body)
        await resp.prepare(request)
        if self.drop_next:
            self.drop_next -= 1
            await resp.write(body[:len(body) // 2])
            request.transport.close()
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def _export(self, request: web.Request) -> web.StreamResponse:
        model = self._model(request)
        if model is None:
            return web.json_response({"message": "Model not found"}, status=404)
        return await self._zip(request, model.files)

    async def _export_optimized(self, request: web.Request) -> web.StreamResponse:
        model = self._model(request)
        files = (model.optimized if model else {}).get(request.match_info["o"])
        if files is None:
            return web.json_response({"message": "Optimized model not found"}, status=404)
        if request.query.get("model_only", "false") == "false":
            files = {**files, "example_code/demo.py": b"print('demo')\n"}
        return await self._zip(request, files)

    def _apps(self) -> tuple[web.Application]:
        app = web.Application(middlewares=[self._auth])
        base = "/api/v1/organizations/{org}/workspaces/{ws}/projects"
        app.router.add_get(base, self._projects)
        app.router.add_get(base + "/{p}/model_groups/{g}", self._group)
        app.router.add_get(base + "/{p}/model_groups/{g}/models/{m}/export", self._export)
        app.router.add_get(base + "/{p}/model_groups/{g}/models/{m}/optimized_models/{o}/export",
                           self._export_optimized)
        return (app,)

    def _listening(self, ports: list[int]) -> None:
        self.url = f"http://127.0.0.1:{ports[0]}"

    def env(self) -> dict[str, str]:
        return {"GETI_HOST": self.url, "GETI_ORGANIZATION_ID": self.organization,
                "GETI_WORKSPACE_ID": self.workspace, "GETI_TOKEN": self.token}
