"""The OpenAI Responses API (/v3/responses) as OVMS has it (src/llm/apis/openai_responses.cpp,
docs/model_server_rest_api_responses.md), on the chat machinery.

A request becomes a chat/completions request (its ``input`` items become chat messages) and is checked by the
chat decoder, so every sampling field, tool and message rule is the chat endpoint's. Answers are built by
``ResponseBuilder`` from what the output parser settles (reasoning, text, tool calls), unary or as the Responses
event sequence.

Beyond OVMS, as OpenAI's clients send them: ``instructions`` (a system message first), ``text.format``
(json_schema / json_object, as ``response_format``), and ``tool_choice`` in the Responses shape
(``{"type": "function", "name": ...}``). Refused with the reason: ``previous_response_id`` and ``conversation``
(nothing is stored here), ``background: true``, and tools other than functions.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

from ovms.genai.protocol.chat import GenerateCall, decode_generate
from ovms.genai.protocol.common import invalid, log_unknown, new_id
from ovms.genai.types import ToolCall, ToolCallDelta, Usage

# Passed on to the chat decoder as they are (OVMS's Responses fields that chat/completions has too).
_CHAT_FIELDS = {"model", "stream", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                "frequency_penalty", "presence_penalty", "seed", "stop", "include_stop_str_in_output", "ignore_eos",
                "n", "best_of", "length_penalty", "logprobs", "response_format", "chat_template_kwargs",
                "skip_special_tokens", "num_assistant_tokens", "assistant_confidence_threshold", "max_ngram_size"}
_OWN_FIELDS = {"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text", "reasoning",
               "stream_options", "previous_response_id", "conversation", "background"}
# OpenAI fields OVMS lists as unsupported and ignores (logged).
_IGNORED = {"store", "metadata", "user", "truncation", "include", "parallel_tool_calls", "max_tool_calls", "prompt",
            "prompt_cache_key", "prompt_cache_retention", "service_tier", "safety_identifier", "top_logprobs",
            "context_management"}


@dataclasses.dataclass(slots=True)
class ResponsesCall:
    """A decoded Responses request: the chat call it runs as, and what the answer echoes."""

    generate: GenerateCall
    tools: list  # as the request gave them (echoed)
    tool_choice: Any
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text_format: dict | None = None


def _tool(tool: Any, index: int) -> dict:
    """A Responses tool (flat ``{type, name, parameters}`` or chat's nested form) as a chat tool."""
    if not isinstance(tool, dict):
        raise invalid(f"tools[{index}] is not an object")
    kind = tool.get("type")
    if kind != "function":
        raise invalid(f"tools[{index}]: tool type {kind!r} is not supported; only function tools are (built-in "
                      "tools such as web_search, file_search or code_interpreter, and MCP tools, are not served)")
    if isinstance(tool.get("function"), dict):
        return {"type": "function", "function": tool["function"]}
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise invalid(f"tools[{index}]: a function tool needs a name")
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if key in tool:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _content_parts(content: Any, where: str) -> Any:
    """A Responses message content as chat content (input_text/output_text -> text, input_image -> image_url)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("input item content must be a string or array")
    if not content:
        raise invalid("input item content array must not be empty")
    parts = []
    for part in content:
        if not isinstance(part, dict):
            raise invalid("input content items must be objects")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise invalid("input content item type is missing or invalid")
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise invalid(f"{kind} requires a valid text field")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if url is None:
                raise invalid("input_image requires image_url field")
            if isinstance(url, dict):
                url = url.get("url")
                if not isinstance(url, str):
                    raise invalid("input_image.image_url.url is missing or invalid")
            elif not isinstance(url, str):
                raise invalid("input_image.image_url must be a string or object")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise invalid(f"unsupported input content item type: {kind} ({where})")
    return parts


def _messages(value: Any, instructions: str | None) -> list[dict]:
    """``input`` (a string or items) as chat messages, as OVMS's ResponsesInputBuilder builds them: function_call
    items become the next assistant turn's tool_calls, function_call_output items tool messages, reasoning items
    the next assistant turn's reasoning_content."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    if value is None:
        raise invalid("input missing in request")
    if isinstance(value, str):
        if not value:
            raise invalid("input cannot be empty")
        return messages + [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid("input is not a string or array")
    if not value:
        raise invalid("input array must not be empty")
    calls: list[dict] = []
    reasoning: str | None = None

    def flush_calls(content: Any = "") -> None:
        nonlocal calls, reasoning
        if calls or reasoning is not None:
            message = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            messages.append(message)
            calls, reasoning = [], None

    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid("input array items must be objects")
        kind = item.get("type")
        if kind == "reasoning":
            summary = item.get("summary") or item.get("content") or []
            text = "".join(p.get("text", "") for p in summary if isinstance(p, dict)) if isinstance(summary, list) \
                else str(summary)
            reasoning = (reasoning or "") + text
        elif kind == "function_call":
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid("function_call item is missing required call_id (or id) field")
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise invalid("function_call item is missing required name field")
            if not isinstance(item.get("arguments"), str):
                raise invalid("function_call item is missing required arguments field")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})
        elif kind == "function_call_output":
            flush_calls()
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid("function_call_output item is missing required call_id field")
            output = item.get("output", "")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": output if isinstance(output, str) else _content_parts(output, f"input[{i}]")})
        else:
            role = item.get("role")
            if not isinstance(role, str):
                raise invalid("input item role is missing or invalid")
            if "content" not in item:
                raise invalid("input item is missing required content field")
            content = _content_parts(item["content"], f"input[{i}]")
            if role == "developer":
                role = "system"
            if role == "assistant" and (calls or reasoning is not None):
                flush_calls(content)
            else:
                flush_calls()
                messages.append({"role": role, "content": content})
    flush_calls()
    return messages


def _text_format(text: Any) -> tuple[dict | None, dict | None]:
    """``text.format`` as chat's response_format, and the format to echo."""
    if text is None:
        return None, None
    if not isinstance(text, dict):
        raise invalid("text is not an object")
    fmt = text.get("format")
    if fmt is None:
        return None, None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("text.format is not an object with a type")
    if fmt["type"] == "text":
        return None, fmt
    if fmt["type"] == "json_object":
        return {"type": "json_object"}, fmt
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid("text.format.schema is missing or not an object")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"),
                                                       "schema": fmt["schema"]}}, fmt
    raise invalid(f"text.format.type {fmt['type']!r} is not one of text, json_object, json_schema")


def decode_responses(doc: Any) -> ResponsesCall:
    """A /v3/responses request; ServingError (400) naming the field for what is wrong or not served."""
    if not isinstance(doc, dict):
        raise invalid("Request body should be JSON object")
    log_unknown(doc, _CHAT_FIELDS | _OWN_FIELDS | _IGNORED, "responses")
    if doc.get("stream_options") is not None:
        raise invalid("stream_options is not supported in Responses API.")
    for field in ("previous_response_id", "conversation"):
        if doc.get(field) is not None:
            raise invalid(f"{field} is not supported: this server stores no responses; send the whole conversation "
                          "in input (earlier output items included)")
    if doc.get("background"):
        raise invalid("background is not supported: responses are answered while the request waits (or streamed)")
    instructions = doc.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("instructions is not a string")
    chat = {key: value for key, value in doc.items() if key in _CHAT_FIELDS}
    chat["messages"] = _messages(doc.get("input"), instructions)
    max_output = doc.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
            raise invalid("max_output_tokens is not an unsigned integer")
        if max_output > 4294967295:
            raise invalid("max_output_tokens value can't be greater than 4294967295")
        if max_output == 0:
            raise invalid("max_output_tokens value should be greater than 0")
        chat["max_tokens"] = max_output
    tools = doc.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools is not an array")
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
    if "tool_choice" in doc:
        chat["tool_choice"] = _tool_choice(doc["tool_choice"])
    response_format, text_format = _text_format(doc.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = doc.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise invalid("reasoning is not an object")
        effort = reasoning.get("effort")
        if effort is not None:
            if not isinstance(effort, str):
                raise invalid("reasoning.effort is not a string")
            if effort not in ("low", "medium", "high"):
                raise invalid("reasoning.effort must be one of: low, medium, high")
            kwargs = chat.get("chat_template_kwargs")
            chat["chat_template_kwargs"] = {**(kwargs if isinstance(kwargs, dict) else {}), "enable_thinking": True}
    stream = doc.get("stream") is True
    if stream and doc.get("logprobs"):
        raise invalid("logprobs are not supported in streaming mode.")
    if stream and isinstance(doc.get("n"), int) and doc["n"] > 1:
        raise invalid("n greater than 1 is not supported for Responses API streaming")
    call = decode_generate(chat, chat=True)
    return ResponsesCall(call, tools=list(tools or []), tool_choice=doc.get("tool_choice", "auto"),
                         instructions=instructions, max_output_tokens=max_output,
                         temperature=doc.get("temperature"), top_p=doc.get("top_p"), text_format=text_format)


class ResponseBuilder:
    """One response's output items and events, fed with what the output parser settles.

    ``reasoning``, ``text`` and ``tool_call`` return the events (dicts) a piece makes, in the Responses order: an
    item is added, its deltas follow, and it is done when the next item starts or at ``finish``. Items keep the
    order they came in (OVMS's ids: ``rs-0``, ``msg-0``, a call's id). The unary answer is ``response(...)`` after
    ``set_result``, with OVMS's order: reasoning, calls, message.
    """

    def __init__(self, call: ResponsesCall, model: str) -> None:
        self.call = call
        self.model = model
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.items: list[dict] = []  # {"kind": reasoning|message|call, "id", "text" or "name"/"arguments"}
        self._open: dict | None = None

    # ---- events -------------------------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict]:
        snapshot = self.response("in_progress", None)
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=copy.deepcopy(snapshot))]

    def _item_id(self, kind: str) -> str:
        count = sum(1 for item in self.items if item["kind"] == kind)
        return f"{'rs' if kind == 'reasoning' else 'msg'}-{count}"

    def _add(self, item: dict) -> list[dict]:
        events = self._close()
        item["index"] = len(self.items)
        self.items.append(item)
        self._open = item
        events.append(self._event("response.output_item.added", output_index=item["index"],
                                  item=_item_json(item, "in_progress", added=True)))
        if item["kind"] == "reasoning":
            events.append(self._event("response.reasoning_summary_part.added", **_at(item),
                                      part={"type": "summary_text", "text": ""}))
        elif item["kind"] == "message":
            events.append(self._event("response.content_part.added", **_at(item), part=_text_part("")))
        return events

    def reasoning(self, delta: str) -> list[dict]:
        events = []
        if self._open is None or self._open["kind"] != "reasoning":
            events += self._add({"kind": "reasoning", "id": self._item_id("reasoning"), "text": ""})
        self._open["text"] += delta
        events.append(self._event("response.reasoning_summary_text.delta", **_at(self._open), delta=delta))
        return events

    def text(self, delta: str) -> list[dict]:
        events = []
        if self._open is None or self._open["kind"] != "message":
            if not delta.strip():
                return []  # whitespace between items is not a message of its own
            events += self._add({"kind": "message", "id": self._item_id("message"), "text": ""})
        self._open["text"] += delta
        events.append(self._event("response.output_text.delta", **_at(self._open), delta=delta, logprobs=[]))
        return events

    def tool_call(self, delta: ToolCallDelta) -> list[dict]:
        events = []
        if delta.id is not None:  # a new call
            events += self._add({"kind": "call", "id": delta.id, "name": delta.name or "", "arguments": ""})
        if delta.arguments and self._open is not None and self._open["kind"] == "call":
            call = self._open
            call["arguments"] += delta.arguments
            events.append(self._event("response.function_call_arguments.delta", item_id=call["id"],
                                      output_index=call["index"], call_id=call["id"], delta=delta.arguments))
        return events

    def finish(self, finish_reason: str | None, usage: Usage) -> list[dict]:
        """The closing events: the open item done, then response.completed (or .incomplete when cut short)."""
        incomplete = finish_reason == "length"
        events = self._close(incomplete=incomplete)
        status = "incomplete" if incomplete else "completed"
        kind = "response.incomplete" if incomplete else "response.completed"
        return events + [self._event(kind, response=self.response(status, usage))]

    def failed(self, message: str) -> list[dict]:
        return [self._event("response.failed", response=self.response("failed", None, error=message))]

    def _close(self, *, incomplete: bool = False) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = "incomplete" if incomplete and item["kind"] == "message" else "completed"
        done = self._event
        if item["kind"] == "reasoning":
            events = [done("response.reasoning_summary_text.done", **_at(item), text=item["text"]),
                      done("response.reasoning_summary_part.done", **_at(item),
                           part={"type": "summary_text", "text": item["text"]})]
        elif item["kind"] == "message":
            events = [done("response.output_text.done", **_at(item), text=item["text"], logprobs=[]),
                      done("response.content_part.done", **_at(item), part=_text_part(item["text"]))]
        else:
            events = [done("response.function_call_arguments.done", item_id=item["id"], output_index=item["index"],
                           call_id=item["id"], arguments=item["arguments"])]
        return events + [done("response.output_item.done", output_index=item["index"],
                              item=_item_json(item, item["status"]))]

    # ---- the response object -------------------------------------------------------------------------------

    def set_result(self, reasoning: str | None, text: str, calls: list[ToolCall], *, incomplete: bool) -> None:
        """A unary answer's parsed output, in OVMS's order."""
        status = "incomplete" if incomplete else "completed"
        self.items = []
        if reasoning:
            self.items.append({"kind": "reasoning", "id": "rs-0", "text": reasoning, "status": "completed"})
        self.items += [{"kind": "call", "id": c.id, "name": c.name, "arguments": c.arguments, "status": "completed"}
                       for c in calls]
        if text:
            self.items.append({"kind": "message", "id": "msg-0", "text": text, "status": status})

    @property
    def output_text(self) -> str:
        return "".join(item["text"] for item in self.items if item["kind"] == "message")

    def response(self, status: str, usage: Usage | None, *, error: str | None = None) -> dict:
        """The response object, with the output items so far."""
        call = self.call
        body: dict[str, Any] = {"id": self.id, "object": "response", "created_at": self.created_at}
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        body["incomplete_details"] = {"reason": "max_tokens"} if status == "incomplete" else None
        body["error"] = {"code": "server_error", "message": error} if error else None
        if call.instructions is not None:
            body["instructions"] = call.instructions
        body.update({"model": self.model, "status": status, "parallel_tool_calls": True, "store": True})
        if call.temperature is not None:
            body["temperature"] = call.temperature
        body["text"] = {"format": call.text_format or {"type": "text"}}
        body["tool_choice"] = call.tool_choice
        body["tools"] = call.tools
        if call.top_p is not None:
            body["top_p"] = call.top_p
        body.update({"truncation": "disabled", "metadata": {}})
        if call.max_output_tokens is not None:
            body["max_output_tokens"] = call.max_output_tokens
        body["output"] = [] if status == "in_progress" else [
            _item_json(item, item.get("status", "completed")) for item in self.items]
        if usage is not None:
            body["usage"] = {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": usage.completion_tokens,
                             "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": usage.total_tokens}
        return body


def _at(item: dict) -> dict:
    """Where an event's piece goes: the item, its output index, and the content or summary part (always 0)."""
    part = "summary_index" if item["kind"] == "reasoning" else "content_index"
    return {"item_id": item["id"], "output_index": item["index"], part: 0}


def _item_json(item: dict, status: str, *, added: bool = False) -> dict:
    """An output item as the response and the item events show it (empty when just added)."""
    kind = item["kind"]
    if kind == "reasoning":
        return {"id": item["id"], "type": "reasoning",
                "summary": [] if added else [{"type": "summary_text", "text": item["text"]}]}
    if kind == "message":
        return {"id": item["id"], "type": "message", "role": "assistant", "status": status,
                "content": [] if added else [_text_part(item["text"])]}
    return {"id": item["id"], "type": "function_call", "status": status, "call_id": item["id"],
            "name": item["name"], "arguments": "" if added else item["arguments"]}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
