"""OpenAI chat/completions and completions JSON <-> neutral types: requests, answers and SSE chunks.

Validation happens here, at the edge, with OVMS's messages (src/llm/apis/openai_completions.cpp) so the field
is named in every 400. Unknown fields are accepted and logged, as OVMS does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from ovms.genai.protocol.common import boolean, invalid, log_unknown, model_field, number, uint, usage_json
from ovms.genai.types import IGNORE_EOS_MAX_TOKENS, ChatMessage, SamplingParams, ToolCall, ToolCallDelta, Usage

log = logging.getLogger("ovms.openai")

_COMMON = {"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "seed", "stop",
           "include_stop_str_in_output", "ignore_eos", "n", "best_of", "logprobs", "user", "length_penalty",
           "num_assistant_tokens", "assistant_confidence_threshold", "max_ngram_size", "skip_special_tokens"}
_CHAT = _COMMON | {"messages", "tools", "tool_choice", "response_format", "chat_template_kwargs", "top_logprobs",
                   "parallel_tool_calls"}
_COMPLETIONS = _COMMON | {"prompt", "echo", "suffix"}
MAX_STOP_STRINGS = 4


@dataclasses.dataclass(slots=True)
class GenerateCall:
    """A decoded chat or completions request."""

    model: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list[ChatMessage] | None = None  # chat
    prompt: str | None = None  # completions
    echo: bool = False
    tools: list | None = None
    tool_choice: Any = "auto"
    template_kwargs: dict | None = None
    chat: bool = True


def _sampling(doc: dict, *, chat: bool) -> SamplingParams:
    params = SamplingParams()
    max_tokens = uint(doc, "max_completion_tokens", positive=True) if chat else None
    params.max_new_tokens = max_tokens if max_tokens is not None else uint(doc, "max_tokens", positive=True)
    params.temperature = number(doc, "temperature", 0.0, 2.0)
    params.top_p = number(doc, "top_p", 0.0, 1.0)
    top_k = doc.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise invalid("top_k is not an integer")
    params.top_k = top_k if top_k is None or top_k > 0 else None  # OpenAI/vLLM: -1 or 0 mean "all tokens"
    params.min_p = number(doc, "min_p", 0.0, 1.0)
    params.repetition_penalty = number(doc, "repetition_penalty")
    if params.repetition_penalty is not None and params.repetition_penalty <= 0:
        raise invalid("repetition_penalty must be greater than 0")
    params.frequency_penalty = number(doc, "frequency_penalty", -2.0, 2.0)
    params.presence_penalty = number(doc, "presence_penalty", -2.0, 2.0)
    params.seed = uint(doc, "seed")
    stop = doc.get("stop")
    if isinstance(stop, str):
        params.stop = (stop,)
    elif isinstance(stop, list):
        if not all(isinstance(s, str) for s in stop):
            raise invalid("stop array contains non string element")
        if len(stop) > MAX_STOP_STRINGS:
            raise invalid(f"stop array must have no more than {MAX_STOP_STRINGS} strings")
        params.stop = tuple(stop)
    elif stop is not None:
        raise invalid("stop is not a string or array of strings")
    params.include_stop_str_in_output = boolean(doc, "include_stop_str_in_output")
    params.ignore_eos = boolean(doc, "ignore_eos")
    if params.ignore_eos and params.max_new_tokens is not None and params.max_new_tokens > IGNORE_EOS_MAX_TOKENS:
        # OVMS bounds a generation that ignores EOS (without max_tokens the backend stops it there)
        name = "max_completion_tokens" if chat and doc.get("max_completion_tokens") is not None else "max_tokens"
        raise invalid(f"when ignore_eos is true {name} can not be greater than {IGNORE_EOS_MAX_TOKENS}")
    # Assisted decoding (speculative, prompt lookup), as OVMS reads them (src/llm/apis/openai_api_handler.cpp)
    params.num_assistant_tokens = uint(doc, "num_assistant_tokens")
    params.assistant_confidence_threshold = number(doc, "assistant_confidence_threshold")
    params.max_ngram_size = uint(doc, "max_ngram_size")
    skip = doc.get("skip_special_tokens")
    if skip is not None:
        if not isinstance(skip, bool):
            raise invalid("skip_special_tokens is not a bool")
        params.skip_special_tokens = skip
    n = uint(doc, "n", positive=True)
    params.n = n or 1
    best_of = uint(doc, "best_of", positive=True)
    if best_of is not None:
        if best_of < params.n:
            raise invalid("n value cannot be greater than best_of")
        params.best_of = best_of
    logprobs = doc.get("logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise invalid("logprobs accepts values true or false")
        params.logprobs = 1 if logprobs else None
    elif logprobs is not None:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0:
            raise invalid("logprobs is not an unsigned integer")
        params.logprobs = logprobs
    if params.logprobs and doc.get("stream"):
        raise invalid("logprobs are not supported in streaming mode")
    return params


def _stream(doc: dict) -> tuple[bool, bool]:
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("Stream is not bool")
    options = doc.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options provided, but stream not set to true")
        if not isinstance(options, dict):
            raise invalid("stream_options is not an object")
        if set(options) - {"include_usage"}:
            raise invalid("Found unexpected stream options. Properties accepted in stream_options: include_usage")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid("stream_options.include_usage is not a boolean")
    return stream, include_usage


def _content(value, index: int) -> tuple[str, list[str]]:
    """A message's text, and the URLs of its images (image_url parts, in order)."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if isinstance(value, list):
        texts, images = [], []
        for part in value:
            if not isinstance(part, dict) or "type" not in part:
                raise invalid(f"messages[{index}].content: each part must be an object with a type")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise invalid(f"messages[{index}].content: a text part needs a string text")
                texts.append(part["text"])
            elif part["type"] == "image_url":
                image = part.get("image_url")
                if isinstance(image, dict):
                    image = image.get("url")
                    if not isinstance(image, str):
                        raise invalid("Invalid message structure - image_url does not have url field")
                elif not isinstance(image, str):
                    raise invalid("Invalid message structure - content image_url missing")
                images.append(image)
            else:
                raise invalid(f"messages[{index}].content: Unsupported content type {part['type']!r} (text and "
                              "image_url are)")
        return "".join(texts), images
    raise invalid(f"messages[{index}].content is not a string or an array of content parts")


def _messages(doc: dict) -> list[ChatMessage]:
    messages = doc.get("messages")
    if messages is None:
        raise invalid("Messages missing in request")
    if not isinstance(messages, list):
        raise invalid("Messages are not an array")
    if not messages:
        raise invalid("Messages array cannot be empty")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid("Message is not a JSON object")
        role = message.get("role")
        if not isinstance(role, str):
            raise invalid(f"messages[{i}].role is missing or not a string")
        extra = {k: v for k, v in message.items() if k in ("tool_calls", "tool_call_id", "name", "reasoning_content")}
        text, images = _content(message.get("content"), i)
        result.append(ChatMessage(role, text, extra, images))
    return result


def decode_generate(doc: dict, *, chat: bool) -> GenerateCall:
    """A chat/completions (chat=True) or completions request."""
    log_unknown(doc, _CHAT if chat else _COMPLETIONS, "chat/completions" if chat else "completions")
    stream, include_usage = _stream(doc)
    call = GenerateCall(model="", params=SamplingParams(), stream=stream, include_usage=include_usage, chat=chat)
    if chat:
        call.messages = _messages(doc)
    else:
        prompt = doc.get("prompt")
        if prompt is None:
            raise invalid("prompt missing in request")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise invalid("prompt is not a string")
        call.prompt = prompt
        call.echo = boolean(doc, "echo")
    call.model = model_field(doc)
    call.params = _sampling(doc, chat=chat)
    if chat:
        tools = doc.get("tools")
        if tools is not None:
            if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                                      for t in tools):
                raise invalid("tools is not an array of {\"type\": \"function\", \"function\": {...}} objects")
        choice = doc.get("tool_choice", "auto")
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise invalid("tool_choice is not one of none, auto, required or a function object")
        elif not (isinstance(choice, dict) and isinstance(choice.get("function"), dict)
                  and isinstance(choice["function"].get("name"), str)):
            raise invalid("tool_choice is not one of none, auto, required or a function object")
        if isinstance(choice, dict) and tools:
            tools = [t for t in tools if t["function"].get("name") == choice["function"]["name"]]
            if not tools:
                raise invalid("tool_choice names a function that is not in tools")
        call.tools = None if choice == "none" else tools
        call.tool_choice = choice
        kwargs = doc.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise invalid("chat_template_kwargs is not an object")
        call.template_kwargs = kwargs
        call.params.json_schema = _response_format(doc.get("response_format"))
    return call


def _response_format(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise invalid("response_format is not an object with a type")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise invalid("response_format.json_schema.schema is missing or not an object")
        return json.dumps(schema["schema"])
    raise invalid(f"response_format.type {kind!r} is not one of text, json_object, json_schema")


# ---- responses ---------------------------------------------------------------------------------------------

def tool_calls_json(calls: list[ToolCall]) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def tool_call_delta_json(delta: ToolCallDelta) -> dict:
    """A ``delta.tool_calls`` item: the first of a call has its id, type and name, the next ones only arguments."""
    if delta.id is None:
        return {"index": delta.index, "function": {"arguments": delta.arguments}}
    return {"index": delta.index, "id": delta.id, "type": "function",
            "function": {"name": delta.name, "arguments": delta.arguments}}


def _logprobs_json(chat: bool, logprobs: list[float] | None, tokens: list[bytes] | None = None,
                   text_offset: int = 0):
    """OpenAI's logprobs object; ``tokens``: each token's raw bytes ("bytes" in chat, decoded for "token")."""
    if logprobs is None:
        return None
    raw = tokens if tokens is not None and len(tokens) == len(logprobs) else [b""] * len(logprobs)
    texts = [piece.decode("utf-8", "replace") for piece in raw]
    if chat:
        return {"content": [{"token": text, "logprob": lp, "bytes": list(piece), "top_logprobs": []}
                            for text, piece, lp in zip(texts, raw, logprobs)]}
    offsets = []
    for text in texts:
        offsets.append(text_offset)
        text_offset += len(text)
    return {"token_logprobs": logprobs, "tokens": texts, "top_logprobs": None, "text_offset": offsets}


@dataclasses.dataclass(slots=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
    logprobs: list[float] | None = None
    reasoning: str | None = None
    tokens: list[bytes] | None = None  # with logprobs: the raw bytes of each generated token
    echo_chars: int = 0  # completions with echo: the prompt's length, where the generated text starts


def response_json(call: GenerateCall, response_id: str, created: int, choices: list[Choice], usage: Usage) -> dict:
    if call.chat:
        body_choices = []
        for c in choices:
            message: dict[str, Any] = {"role": "assistant", "content": c.text or (None if c.tool_calls else "")}
            if c.reasoning is not None:
                message["reasoning_content"] = c.reasoning
            if c.tool_calls:
                message["tool_calls"] = tool_calls_json(c.tool_calls)
            body_choices.append({"index": c.index, "message": message, "finish_reason": c.finish_reason,
                                 "logprobs": _logprobs_json(True, c.logprobs, c.tokens)})
        obj = "chat.completion"
    else:
        body_choices = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                         "logprobs": _logprobs_json(False, c.logprobs, c.tokens, c.echo_chars)} for c in choices]
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": call.model, "choices": body_choices,
            "usage": usage_json(usage)}


def chunk_json(call: GenerateCall, response_id: str, created: int, index: int, *, text: str | None = None,
               role: bool = False, finish_reason: str | None = None,
               tool_calls: list[ToolCallDelta] | None = None, reasoning: str | None = None) -> dict:
    if call.chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if reasoning is not None:
            delta["reasoning_content"] = reasoning
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = [tool_call_delta_json(t) for t in tool_calls]
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": call.model, "choices": [choice]}


class ChunkEncoder:
    """SSE bytes of text chunks, byte-identical to ``sse(chunk_json(...))``, from a prefix built once per response.

    The hot path of streaming: one call per chunk, a json.dumps of the text only (a full dict dump costs about
    3x more per token; tests/genai/test_protocol.py checks the bytes are the same).
    """

    __slots__ = ("_head", "_chat")

    def __init__(self, call: GenerateCall, response_id: str, created: int) -> None:
        obj = "chat.completion.chunk" if call.chat else "text_completion"
        head = json.dumps({"id": response_id, "object": obj, "created": created, "model": call.model},
                          ensure_ascii=False)
        self._head = "data: " + head[:-1] + ', "choices": [{"index": '
        self._chat = call.chat

    def text(self, index: int, text: str, finish_reason: str | None = None) -> bytes:
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        quoted = json.dumps(text, ensure_ascii=False)
        if self._chat:
            body = f'{index}, "delta": {{"content": {quoted}}}, "finish_reason": {finish}, "logprobs": null}}]}}\n\n'
        else:
            body = f'{index}, "text": {quoted}, "finish_reason": {finish}, "logprobs": null}}]}}\n\n'
        return (self._head + body).encode()

    def reasoning(self, index: int, text: str) -> bytes:
        """A chat chunk whose delta is a piece of ``reasoning_content`` (as vLLM and OVMS stream it)."""
        quoted = json.dumps(text, ensure_ascii=False)
        body = f'{index}, "delta": {{"reasoning_content": {quoted}}}, "finish_reason": null, "logprobs": null}}]}}\n\n'
        return (self._head + body).encode()

    def tool_call(self, index: int, delta: ToolCallDelta) -> bytes:
        """A chat chunk whose delta is one tool-call piece (``sse(chunk_json(..., tool_calls=[delta]))``)."""
        item = json.dumps(tool_call_delta_json(delta), ensure_ascii=False)
        body = f'{index}, "delta": {{"tool_calls": [{item}]}}, "finish_reason": null, "logprobs": null}}]}}\n\n'
        return (self._head + body).encode()

    def finish(self, index: int, finish_reason: str | None) -> bytes:
        """The closing chunk of a choice, with no text (``sse(chunk_json(..., finish_reason=...))``)."""
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        if self._chat:
            body = f'{index}, "delta": {{}}, "finish_reason": {finish}, "logprobs": null}}]}}\n\n'
        else:
            body = f'{index}, "text": "", "finish_reason": {finish}, "logprobs": null}}]}}\n\n'
        return (self._head + body).encode()


def usage_chunk_json(call: GenerateCall, response_id: str, created: int, usage: Usage) -> dict:
    obj = "chat.completion.chunk" if call.chat else "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": call.model, "choices": [],
            "usage": usage_json(usage)}


