"""OpenAI-compatible (and Cohere rerank) REST routes under /v3, with the /v1 aliases OVMS has.

Handlers decode with ``ovms.genai.protocol``, call ``GenAIDataPlane`` and encode; streaming answers are
Server-Sent Events. A client that disconnects mid-stream makes the next write fail, which leaves the
generation context and cancels the sequence in the backend.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import pathlib

import aiohttp
import yarl
from aiohttp import web

from ovms.dataplane import DataPlane
from ovms.genai.dataplane import GenAIDataPlane
from ovms.errors import Kind, ServingError
from ovms.genai.types import TextChunk, Usage
from ovms.genai.media import MediaPolicy, canonical_host, normalize_domains
from ovms.genai import protocol as codec
from ovms.genai.parsers import OutputParser, OutputStream, ReasoningDelta, implicit_reasoning_start

log = logging.getLogger("ovms.openai")


@dataclasses.dataclass(slots=True)
class OpenAISettings:
    """HTTP options of the OpenAI endpoints (from --api_key_file / API_KEY and the CORS flags)."""

    api_key: str | None = None
    allowed_origins: str = "*"
    allowed_methods: str = "*"
    allowed_headers: str = "*"
    allow_credentials: bool = False
    max_body_bytes: int = 64 << 20
    allowed_local_media_path: str | None = None  # images a client may name by path, under this directory
    allowed_media_domains: tuple[str, ...] = ()  # hosts the server may fetch images from (http, https)
    verbose_response: bool = False  # --verbose_response: "__verbose" {prompt, content} on answers


GENAI = web.AppKey("genai_dataplane", GenAIDataPlane)
SETTINGS = web.AppKey("openai_settings", OpenAISettings)
PREFIXES = ("/v3", "/v3/v1", "/v1")


def _json(document: dict, status: int = 200) -> web.Response:
    import json

    return web.Response(body=json.dumps(document, ensure_ascii=False).encode(), status=status,
                        content_type="application/json")


async def _body(request: web.Request) -> dict:
    _check_key(request)
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ServingError(Kind.GENAI_INVALID_REQUEST, f"request body is {request.content_length} bytes; the limit "
                                                       f"is {settings.max_body_bytes}")
    return codec.parse_body(await request.read())


def _check_key(request: web.Request) -> None:
    settings = request.app[SETTINGS]
    if settings.api_key is not None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ServingError(Kind.UNAUTHORIZED)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, codec.decode_generate(await _body(request), chat=True))


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, codec.decode_generate(await _body(request), chat=False))


async def _generate(request: web.Request, call: codec.GenerateCall) -> web.StreamResponse:
    dp = request.app[GENAI]
    response_id, created = codec.new_id("chatcmpl" if call.chat else "cmpl"), codec.now()
    verbose = request.app[SETTINGS].verbose_response
    if verbose:
        call.params.keep_raw = True
    async with dp.generation(call.model, call.params, messages=call.messages, prompt=call.prompt,
                             tools=call.tools, template_kwargs=call.template_kwargs, stream=call.stream,
                             tools_required=call.tool_choice == "required") as generation:
        if call.stream:
            return await _stream(request, call, generation, response_id, created)
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        logprobs: dict[int, list[float]] = {}
        tokens: dict[int, list[bytes]] = {}
        completion_tokens = 0
        transport = request.transport
        async for chunk in generation.stream:
            if transport is None or transport.is_closing():
                # The client left (aiohttp does not cancel handlers): cancel the generation and free its
                # sequence, as a disconnect does for a streamed answer.
                generation.stream.abort()
                log.info("client of %s went away; generation cancelled", response_id)
                break
            texts.setdefault(chunk.index, []).append(chunk.text)
            completion_tokens += chunk.token_count
            if chunk.logprobs is not None and call.params.logprobs:
                logprobs.setdefault(chunk.index, []).extend(chunk.logprobs)
                tokens.setdefault(chunk.index, []).extend(chunk.tokens or ())
            if chunk.finish_reason is not None:
                finish[chunk.index] = chunk.finish_reason
        choices = []
        for index in sorted(texts):
            text = "".join(texts[index])
            choice = codec.Choice(index, text, finish.get(index, "stop"), logprobs=logprobs.get(index),
                                  tokens=tokens.get(index))
            if call.chat:
                choice.reasoning, choice.text, choice.tool_calls = _output_parser(call, generation).parse(text)
                if choice.tool_calls:
                    choice.finish_reason = "tool_calls"
            if call.echo:
                choice.text = generation.prompt + choice.text
                choice.echo_chars = len(generation.prompt)
            choices.append(choice)
        usage = Usage(generation.stream.prompt_tokens, completion_tokens)
        body = codec.response_json(call, response_id, created, choices, usage)
        if verbose:
            body["__verbose"] = _verbose(generation)
        return _json(body)


class _EventStream(web.StreamResponse):
    """An SSE answer whose headers leave with its first event, in one write (aiohttp's small-payload path)."""

    _send_headers_immediately = False


async def _stream(request: web.Request, call: codec.GenerateCall, generation, response_id: str,
                  created: int) -> web.StreamResponse:
    response = _EventStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    verbose = request.app[SETTINGS].verbose_response
    output_parser = _output_parser(call, generation) if call.chat else None
    parse = output_parser is not None and output_parser.active
    output_streams: dict[int, OutputStream] = {}
    encoder = codec.ChunkEncoder(call, response_id, created)
    completion_tokens = 0
    # Chunks that end a choice wait for the next write: the end of the answer (usage, [DONE]) normally follows
    # in the same frame, and leaves with them in one write instead of three. Every write is a system call and
    # wakes the client, both taken from the cores the pipeline steps on.
    held: list[bytes] = []
    try:
        await response.prepare(request)
        if call.chat or call.echo:  # chat: the assistant role first; completions with echo: the prompt first
            text = "" if call.chat else generation.prompt
            await response.write(b"".join(codec.sse(codec.chunk_json(call, response_id, created, index,
                                                                     role=call.chat, text=text))
                                          for index in range(call.params.n)))
        async for chunk in generation.stream:
            completion_tokens += chunk.token_count
            if parse:
                output_stream = output_streams.get(chunk.index)
                if output_stream is None:
                    output_stream = output_streams[chunk.index] = output_parser.stream(
                        label=f"{response_id} choice {chunk.index}")
                data = _parsed_chunks(encoder, output_stream, chunk)
                if verbose and chunk.finish_reason is not None and chunk.index == 0:
                    data[-1] = _with_verbose(data[-1], generation)
                if data:
                    await response.write(b"".join(data))
                continue
            if not chunk.text and chunk.finish_reason is None:
                continue
            # The finish reason rides on the chunk that ends the sequence; when the end (EOS) comes one step
            # after the last text, that chunk has empty content, as OpenAI's and vLLM's final chunks do. Holding
            # text back to merge them would add a flush interval to the time to first token.
            data = encoder.text(chunk.index, chunk.text, chunk.finish_reason)
            if chunk.finish_reason is not None:
                if verbose and chunk.index == 0:
                    data = _with_verbose(data, generation)
                held.append(data)
            elif held:
                held.append(data)
                await response.write(b"".join(held))
                held.clear()
            else:
                await response.write(data)
        if call.include_usage:
            usage = Usage(generation.stream.prompt_tokens, completion_tokens)
            held.append(codec.sse(codec.usage_chunk_json(call, response_id, created, usage)))
        held.append(codec.SSE_DONE)
        await response.write_eof(b"".join(held))
    except ServingError as exc:  # after the headers: report in the stream, as OVMS does
        held += [codec.sse({"error": exc.message}), codec.SSE_DONE]
        await response.write(b"".join(held))
    except (ConnectionResetError, ConnectionError):
        log.info("client of %s went away; generation cancelled", response_id)
    return response


async def responses(request: web.Request) -> web.StreamResponse:
    """/v3/responses: the chat machinery, answered as a Responses object or its event stream."""
    call = codec.decode_responses(await _body(request))
    chat = call.generate
    async with request.app[GENAI].generation(chat.model, chat.params, messages=chat.messages, tools=chat.tools,
                                             template_kwargs=chat.template_kwargs, stream=chat.stream,
                                             tools_required=chat.tool_choice == "required") as generation:
        builder = codec.ResponseBuilder(call, chat.model)
        parser = _output_parser(chat, generation)
        if chat.stream:
            return await _responses_stream(request, builder, parser, generation)
        texts: list[str] = []
        finish, completion_tokens = None, 0
        transport = request.transport
        async for chunk in generation.stream:
            if transport is None or transport.is_closing():
                generation.stream.abort()
                break
            completion_tokens += chunk.token_count
            if chunk.index == 0:  # the Responses answer has one message; n > 1 keeps the first choice
                texts.append(chunk.text)
                finish = chunk.finish_reason or finish
        reasoning, text, calls = parser.parse("".join(texts))
        builder.set_result(reasoning, text, calls, incomplete=finish == "length")
        usage = Usage(generation.stream.prompt_tokens, completion_tokens)
        return _json(builder.response("incomplete" if finish == "length" else "completed", usage))


async def _responses_stream(request: web.Request, builder, parser: OutputParser, generation) -> web.StreamResponse:
    response = _EventStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    stream = parser.stream(label=builder.id) if parser.active else None
    completion_tokens = 0

    def encode(events: list[dict]) -> bytes:
        return b"".join(codec.sse(event) for event in events)

    try:
        await response.prepare(request)
        await response.write(encode(builder.start()))
        async for chunk in generation.stream:
            completion_tokens += chunk.token_count
            if chunk.index != 0:
                continue
            events: list[dict] = []
            pieces = ([chunk.text] if chunk.text else []) if stream is None else stream.feed(chunk.text)
            if stream is not None and chunk.finish_reason is not None:
                pieces += stream.finish()
            for piece in pieces:
                if isinstance(piece, str):
                    events += builder.text(piece)
                elif isinstance(piece, ReasoningDelta):
                    events += builder.reasoning(piece.text)
                else:
                    events += builder.tool_call(piece)
            if chunk.finish_reason is not None:
                usage = Usage(generation.stream.prompt_tokens, completion_tokens)
                await response.write_eof(encode(events + builder.finish(chunk.finish_reason, usage))
                                         + codec.SSE_DONE)
                return response
            if events:
                await response.write(encode(events))
        await response.write_eof(encode(builder.finish("stop", Usage(generation.stream.prompt_tokens,
                                                                     completion_tokens))) + codec.SSE_DONE)
    except ServingError as exc:  # after the headers: report in the stream, as OVMS does (response.failed)
        await response.write(encode(builder.failed(exc.message)) + codec.SSE_DONE)
    except (ConnectionResetError, ConnectionError):
        log.info("client of %s went away; generation cancelled", builder.id)
    return response


def _verbose(generation) -> dict:
    """OVMS's --verbose_response object: the prompt after the chat template, the first choice's raw output."""
    return {"prompt": generation.prompt, "content": generation.stream.raw_text(0) or ""}


def _with_verbose(event: bytes, generation) -> bytes:
    """An SSE chunk with the "__verbose" object added (OVMS puts it on the final chunk)."""
    document = json.loads(event[len(b"data: "):].strip())
    document["__verbose"] = _verbose(generation)
    return codec.sse(document)


def _output_parser(call: codec.GenerateCall, generation) -> OutputParser:
    """The graph's reasoning and tool parsers for this request (tool calls only when it offers tools)."""
    info = generation.info
    if not call.params.skip_special_tokens:  # OVMS: the raw text, special tokens and all, is not parsed
        return OutputParser(None, None, tools=call.tools)
    return OutputParser(info.tool_parser, info.reasoning_parser, tools=call.tools,
                        implicit=implicit_reasoning_start(info.reasoning_parser, generation.prompt))


def _parsed_chunks(encoder: codec.ChunkEncoder, output_stream: OutputStream, chunk: TextChunk) -> list[bytes]:
    """SSE chunks of what ``chunk`` settles: reasoning, content and tool-call pieces in order, then the finish."""
    pieces = output_stream.feed(chunk.text)
    if chunk.finish_reason is not None:
        pieces += output_stream.finish()
    chunks = []
    for piece in pieces:
        if isinstance(piece, str):
            chunks.append(encoder.text(chunk.index, piece))
        elif isinstance(piece, ReasoningDelta):
            chunks.append(encoder.reasoning(chunk.index, piece.text))
        else:
            chunks.append(encoder.tool_call(chunk.index, piece))
    if chunk.finish_reason is not None:
        chunks.append(encoder.finish(chunk.index, output_stream.finish_reason(chunk.finish_reason)))
    return chunks


async def embeddings(request: web.Request) -> web.Response:
    call = codec.decode_embeddings(await _body(request))
    result = await request.app[GENAI].embed(call.model, call.inputs)
    return _json(codec.embeddings_json(call, result.vectors, result.prompt_tokens))


async def rerank(request: web.Request) -> web.Response:
    call = codec.decode_rerank(await _body(request))
    result = await request.app[GENAI].rerank(call.model, call.query, call.documents)
    return _json(codec.rerank_json(call, result.scores, result.prompt_tokens))


async def tokenize(request: web.Request) -> web.Response:
    call = codec.decode_tokenize(await _body(request))
    rows = await request.app[GENAI].tokenize(call.model, call.texts, call.options)
    return _json(codec.tokenize_json(rows))


async def image_generations(request: web.Request) -> web.Response:
    call = codec.decode_image_generation(await _body(request))
    result = await request.app[GENAI].images(call, edit=False, client_gone=_client_gone(request))
    return _json(codec.images_json(result, codec.now()))


async def image_edits(request: web.Request) -> web.Response:
    fields, files = await _form(request)
    call = codec.decode_image_edit(fields, files)
    result = await request.app[GENAI].images(call, edit=True, client_gone=_client_gone(request))
    return _json(codec.images_json(result, codec.now()))


async def _multipart(request: web.Request) -> codec.Form:
    """A multipart/form-data body (as the OpenAI client uploads files), within the body size limit."""
    _check_key(request)
    limit = request.app[SETTINGS].max_body_bytes
    too_big = ServingError(Kind.GENAI_INVALID_REQUEST, f"request body is larger than the limit of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    if request.content_type != "multipart/form-data":
        raise ServingError(Kind.GENAI_INVALID_REQUEST, f"Failed to parse multipart data: the body is "
                                                       f"{request.content_type or 'untyped'}; send multipart/form-data, "
                                                       "as the OpenAI client does")
    form, total = codec.Form(), 0
    try:
        reader = await request.multipart()
        async for part in reader:
            data = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                total += len(chunk)
                if total > limit:
                    raise too_big
                data += chunk
            if part.filename is not None:
                form.files.setdefault(part.name or "", []).append((part.filename, bytes(data)))
            else:
                form.fields.setdefault(part.name or "", []).append(data.decode("utf-8", "replace"))
    except (ValueError, AssertionError, aiohttp.ClientPayloadError) as exc:
        raise ServingError(Kind.GENAI_INVALID_REQUEST, f"Failed to parse multipart data: {exc}") from None
    return form


async def _form(request: web.Request) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart/form-data body as its text fields (the last value of each) and its files (by field name)."""
    form = await _multipart(request)
    return ({name: values[-1] for name, values in form.fields.items()},
            {name: [content for _, content in parts] for name, parts in form.files.items()})


def _client_gone(request: web.Request):
    """Whether the client closed the connection (aiohttp does not cancel the handler): asked by a servable before
    and while it runs a request, so a queue of abandoned requests does not keep the pipeline busy."""
    transport = request.transport

    def gone() -> bool:
        return transport is None or transport.is_closing()

    return gone


async def transcriptions(request: web.Request) -> web.Response:
    return await _transcribe(request, translate=False)


async def translations(request: web.Request) -> web.Response:
    return await _transcribe(request, translate=True)


async def _transcribe(request: web.Request, *, translate: bool) -> web.StreamResponse:
    call = codec.decode_transcription(await _multipart(request), translate=translate)
    if call.stream:
        return await _transcription_stream(request, call)
    result = await request.app[GENAI].transcribe(call.model, call.audio, call.request,
                                                 client_gone=_client_gone(request))
    if call.response_format == "text":
        return web.Response(text=result.text, content_type="text/plain")
    return _json(codec.transcription_json(result))


async def _transcription_stream(request: web.Request, call: codec.TranscriptionCall) -> web.StreamResponse:
    """OVMS's streamed transcription: a transcript.text.delta event per piece, then transcript.text.done."""
    async with contextlib.aclosing(request.app[GENAI].transcribe_stream(call.model, call.audio,
                                                                        call.request)) as pieces:
        item = await anext(pieces)  # failures before the first piece are plain 400s
        response = _EventStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            while isinstance(item, str):
                await response.write(codec.sse(codec.transcription_delta_json(item)))
                item = await anext(pieces)
            await response.write_eof(codec.sse(codec.transcription_done_json(item)))
        except ServingError as exc:  # after the headers: reported in the stream
            await response.write(codec.sse({"error": exc.message}))
        except (ConnectionResetError, ConnectionError):
            log.info("client of a streamed transcription went away; generation cancelled")
    return response


async def speech(request: web.Request) -> web.Response:
    call = codec.decode_speech(await _body(request))
    wav = await request.app[GENAI].speak(call.model, call.request, client_gone=_client_gone(request))
    return web.Response(body=wav, content_type="audio/wav")


async def list_models(request: web.Request) -> web.Response:
    _check_key(request)
    return _json(codec.models_json(request.app[GENAI].list_models()))


async def get_model(request: web.Request) -> web.Response:
    _check_key(request)
    name, created = request.app[GENAI].get_model(request.match_info["model_id"])
    return _json(codec.model_json(name, created))


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith(PREFIXES) or "Origin" not in request.headers:
        return
    settings = request.app[SETTINGS]
    origin = request.headers["Origin"]
    allowed = [o.strip() for o in settings.allowed_origins.split(",")]
    if "*" not in allowed and origin not in allowed:
        return
    response.headers["Access-Control-Allow-Origin"] = origin if settings.allow_credentials else (
        "*" if "*" in allowed else origin)
    response.headers["Access-Control-Allow-Methods"] = settings.allowed_methods
    response.headers["Access-Control-Allow-Headers"] = settings.allowed_headers
    if settings.allow_credentials:
        response.headers["Access-Control-Allow-Credentials"] = "true"


def _image_fetcher(app: web.Application):
    """GET an image from an allowed host: 30 s at most, no redirects (one could lead off the allowed hosts)."""
    sessions: list[aiohttp.ClientSession] = []

    async def close(_app) -> None:
        for session in sessions:
            await session.close()

    app.on_cleanup.append(close)

    async def fetch(url: str, host: str, limit: int) -> bytes:
        target = yarl.URL(url)
        # The host media.py allowed, as the client library will connect to it: two URL parsers must not disagree.
        if canonical_host(target.host or "") != canonical_host(host):
            raise ServingError(Kind.GENAI_INVALID_REQUEST, f"Downloading image failed: {url} is not a plain "
                                                           f"http(s) URL of host {host}")
        if not sessions:
            sessions.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
        async with sessions[0].get(target, allow_redirects=False) as response:
            if response.status != 200:
                raise ServingError(Kind.GENAI_INVALID_REQUEST, f"Downloading image failed: HTTP {response.status} "
                                                               f"from {url}")
            too_big = ServingError(Kind.GENAI_INVALID_REQUEST, f"the image at {url} is larger than {limit} bytes")
            if response.content_length is not None and response.content_length > limit:
                raise too_big
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise too_big
            return bytes(body)

    return fetch


def add_routes(app: web.Application, dataplane: DataPlane) -> None:
    """Mount the OpenAI / Cohere endpoints on the REST app (settings from ``dataplane.openai_settings``)."""
    app[GENAI] = GenAIDataPlane(dataplane)
    app[SETTINGS] = settings = getattr(dataplane, "openai_settings", None) or OpenAISettings()
    local = settings.allowed_local_media_path
    app[GENAI].media = MediaPolicy(local_path=pathlib.Path(local) if local else None,
                                   domains=normalize_domains(settings.allowed_media_domains),
                                   fetch=_image_fetcher(app) if settings.allowed_media_domains else None)
    app.on_response_prepare.append(_cors_headers)
    add = app.router.add_route
    posts = {"chat/completions": chat_completions, "completions": completions, "embeddings": embeddings,
             "rerank": rerank, "tokenize": tokenize, "responses": responses, "images/generations": image_generations,
             "images/edits": image_edits, "audio/transcriptions": transcriptions, "audio/translations": translations,
             "audio/speech": speech}
    for prefix in PREFIXES:
        for path, handler in posts.items():
            add("POST", f"{prefix}/{path}", handler)
            add("OPTIONS", f"{prefix}/{path}", preflight)
        add("GET", f"{prefix}/models", list_models)
        if prefix != "/v1":  # GET /v1/models/{name} is TensorFlow Serving's model status
            add("GET", prefix + "/models/{model_id}", get_model)
