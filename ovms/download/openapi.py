"""The OpenAPI 3 document, built from ``routes.ROUTES`` and the schemas the handlers validate with."""
from __future__ import annotations

import ovms
from ovms.download import schema
from ovms.download.routes import PREFIX, ROUTES

_ERROR = {"type": "object", "properties": {"detail": {}}, "description": "detail: a message, or (422) a list "
          "of {type, loc, msg, input} naming each invalid field"}


def document() -> dict:
    paths: dict = {}
    for route in ROUTES:
        op: dict = {"summary": route.summary, "operationId": route.handler.__name__, "responses": {}}
        params = [{"name": name, "in": "query", "required": required, "description": text,
                   "schema": {"type": "string"}} for name, required, text in route.query]
        if "{job_id}" in route.path:
            params.append({"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}})
        if "{name}" in route.path:
            params.append({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}})
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.body.name}"}}}}
        if "/" in route.answer:  # a media type (server-sent events, the docs page and its assets)
            content = {route.answer: {"schema": {"type": "string"}}}
        elif route.answer == "object":
            content = {"application/json": {"schema": {"type": "object"}}}
        else:
            content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.answer}"}}}
        op["responses"]["200"] = {"description": "OK", "content": content}
        for code in route.errors:
            op["responses"][str(code)] = {"description": {400: "Refused (the reason in detail)", 404: "Not found",
                                                         409: "Conflict", 422: "Validation error",
                                                         401: "The hub refused the credentials",
                                                         501: "This hub cannot list (the reason in detail)",
                                                         502: "The hub failed"}[code],
                                          "content": {"application/json": {"schema": _ERROR}}}
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = op
    return {"openapi": "3.0.3",
            "info": {"title": "OVMS model download API", "version": ovms.__version__,
                     "description": "Compatible with the Model Download microservice's API."},
            "paths": paths, "components": {"schemas": schema.all_schemas()}}
