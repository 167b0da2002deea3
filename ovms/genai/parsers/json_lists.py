"""Tool calls written as a JSON list after a marker (phi4, mistral) or as name + JSON arguments (devstral).

- ``phi4`` (Phi-4-mini): ``functools[{"name": "f", "arguments": {...}}, ...]``; OVMS src/llm/io_processing/phi4.
- ``mistral`` (Mistral 7B v0.3, Mistral Small): ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]``, or the
  list alone at the start of the answer (the ``[TOOL_CALLS]`` special token skipped); OVMS .../mistral.
- ``devstral``: ``[TOOL_CALLS]f[ARGS]{...}``, one call per ``[TOOL_CALLS]``; OVMS .../devstral.

As in OVMS, a list item without a string ``name`` or an object ``arguments`` is not a call; text after the list
is dropped. Arguments are written as ``json.dumps`` writes them, as for every parser here.
"""
from __future__ import annotations

from ovms.genai.json_stream import JsonStreamError
from ovms.genai.parsers.incremental import Parsed, content_before, scan_call_object, scan_json, skip_space, \
    undecided_tail, with_calls


def _json_list_calls(text: str, start: int, final: bool) -> list[tuple[str, str]] | None:
    """The calls of the JSON list at ``start`` (settled so far); None when there is no list there."""
    position = skip_space(text, start)
    if position == len(text):
        return []
    if text[position] != "[":
        return None
    calls = []
    position += 1
    while True:
        position = skip_space(text, position)
        if position == len(text) or text[position] == "]":
            return calls
        if text[position] == ",":
            position += 1
            continue
        if text[position] != "{":
            return calls
        scan = scan_call_object(text, position)
        if scan.valid and scan.name is not None and scan.arguments is not None:
            if scan.end is not None and not scan.arguments_done:
                return calls
            if scan.end is not None or not final:
                calls.append((scan.name, scan.arguments))
        if scan.end is None or not scan.valid:
            return calls
        position = scan.end


def parse_phi4(text: str, final: bool) -> Parsed:
    content, at, marker = content_before(text, ("functools",), final)
    if at < 0:
        return Parsed(content)
    calls = _json_list_calls(text, at + len(marker), final) or []
    return with_calls(text, content, calls, final)


_MISTRAL = "[TOOL_CALLS]"


def parse_mistral(text: str, final: bool) -> Parsed:
    body = text.lstrip()
    if body.startswith("[{") or (not final and body in ("", "[")):
        start, content = len(text) - len(body), ""
    else:
        content, start, marker = content_before(text, (_MISTRAL,), final)
        if start < 0:
            return Parsed(content)
        start += len(marker)
    calls = _json_list_calls(text, start, final) or []
    return with_calls(text, content, calls, final)


def parse_devstral(text: str, final: bool) -> Parsed:
    content, at, marker = content_before(text, (_MISTRAL,), final)
    if at < 0:
        return Parsed(content)
    calls = []
    while at >= 0:
        name_start = at + len(_MISTRAL)
        args_at = text.find("[ARGS]", name_start)
        if args_at < 0:
            break
        name = text[name_start:args_at].strip()
        if not name:
            break
        position = skip_space(text, args_at + len("[ARGS]"))
        rest = text[position:]
        if not rest or rest.startswith("</s>") or (not final and undecided_tail(rest, ("</s>",)) == len(rest)):
            if final or rest:
                calls.append((name, "{}"))
            elif not final:
                calls.append((name, ""))
            break
        try:
            scan = scan_json(text, position)
        except JsonStreamError:
            break
        if scan.end is None and final:
            break
        calls.append((name, scan.text))
        if scan.end is None:
            break
        at = text.find(_MISTRAL, scan.end)
    return with_calls(text, content, calls, final)
