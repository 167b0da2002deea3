"""/v3/models: the served generative models as OpenAI lists them."""
from __future__ import annotations


def model_json(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "OVMS"}


def models_json(names: list[tuple[str, int]]) -> dict:
    return {"object": "list", "data": [model_json(name, created) for name, created in names]}
