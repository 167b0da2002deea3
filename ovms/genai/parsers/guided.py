"""Tool-guided generation: the tool-call constraint OVMS gives openvino_genai's structured output.

With ``enable_tool_guided_generation: true`` in the graph, or ``tool_choice: "required"`` in a request, OVMS
constrains what follows a tool-call trigger to a call of one of the request's tools with arguments that match its
schema (a structural tag per tool; src/llm/io_processing/{hermes3,llama3,phi4,devstral}/
generation_config_builder.cpp). ``"required"`` also requires at least one call. OVMS builds the constraint for
these four parsers only.

The result is plain data (it crosses the worker's socket); ``ovms.backends.genai_worker`` turns it into a
``StructuredOutputConfig.TriggeredTags``.
"""
from __future__ import annotations

import json

GUIDED_PARSERS = ("hermes3", "llama3", "phi4", "devstral")


def _schemas(tools: list) -> list[tuple[str, str]]:
    found = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            schema = parameters if isinstance(parameters, dict) and parameters else {"type": "object"}
            found.append((function["name"], json.dumps(schema, ensure_ascii=False)))
    return found


def tool_call_tags(parser: str | None, tools: list | None, *, required: bool) -> dict | None:
    """``{"triggers": [...], "tags": [{"begin", "schema", "end"}], "at_least_one": bool}``, or None when the
    parser has no constraint (or the request no tools)."""
    schemas = _schemas(tools or [])
    if parser not in GUIDED_PARSERS or not schemas:
        return None
    if parser == "hermes3":
        triggers = ["<tool_call>"]
        tags = [{"begin": f'<tool_call>\n{{"name": "{name}", "arguments": ', "schema": schema,
                 "end": "}\n</tool_call>"} for name, schema in schemas]
    elif parser == "llama3":
        triggers = ['{"name":']
        tags = [{"begin": f'{{"name": "{name}", "parameters": ', "schema": schema, "end": "}"}
                for name, schema in schemas]
    elif parser == "devstral":
        triggers = ["[TOOL_CALLS]"]
        tags = [{"begin": f"[TOOL_CALLS]{name}[ARGS]", "schema": schema, "end": ""} for name, schema in schemas]
    else:  # phi4: one tag, a list of calls of any of the tools
        triggers = ["functools"]
        items = [{"type": "object", "properties": {"name": {"type": "string", "enum": [name]},
                                                   "arguments": json.loads(schema)},
                  "required": ["name", "arguments"]} for name, schema in schemas]
        tags = [{"begin": "functools", "schema": json.dumps({"type": "array", "items": {"anyOf": items}}),
                 "end": ""}]
    return {"triggers": triggers, "tags": tags, "at_least_one": required}
