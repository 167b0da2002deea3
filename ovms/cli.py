"""The ``ovms`` command line, compatible with the OpenVINO Model Server binary.

Usage errors print OVMS's message and exit 64 (EX_USAGE), as ``ovms`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from ovms import __version__, logging_setup
from ovms.errors import ConfigError
from ovms.pull import cli as pull_cli
from ovms.repository import is_remote

EX_USAGE = 64
MAX_PORT = 65535


class UsageError(Exception):
    """A command line that cannot work; the message is what OVMS prints."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2
        raise UsageError(f"error parsing options: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ovms", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="OpenVINO Model Server (Python): serves OpenVINO IR, ONNX, PaddlePaddle, TensorFlow and TFLite "
                    "models over KServe v2 and TFS gRPC and "
                    "REST, and pulls models from the Hugging Face Hub.",
        epilog="Examples:\n"
               "  ovms --model_name resnet --model_path /models/resnet --port 9000 --rest_port 8000\n"
               "  ovms --config_path /models/config.json --port 9000 --rest_port 8000\n"
               "  ovms --pull --source_model OpenVINO/Qwen3-8B-int4-ov --model_repository_path /models "
               "--task text_generation\n"
               "A model directory holds numeric version folders: /models/resnet/1/model.xml, model.bin")
    parser.add_argument("--version", action="store_true", help="print the server and OpenVINO versions and exit")
    server = parser.add_argument_group("server")
    server.add_argument("--port", type=int, default=0, help="gRPC port (0: gRPC disabled)")
    server.add_argument("--rest_port", type=int, default=0, help="REST port (0: REST disabled)")
    server.add_argument("--grpc_bind_address", default="0.0.0.0", help="address gRPC listens on")
    server.add_argument("--rest_bind_address", default="0.0.0.0", help="address REST listens on")
    server.add_argument("--grpc_workers", type=int, default=1, help="gRPC server instances (1 to CPU count)")
    server.add_argument("--rest_workers", type=int, default=None,
                        help="accepted as OVMS has it (2 to 10000) and not used: one event loop serves REST, with "
                             "no thread pool to size (a warning says so)")
    server.add_argument("--grpc_channel_arguments", default="",
                        help="gRPC server arguments, comma separated, e.g. grpc.max_concurrent_streams=64,"
                             "grpc.max_connection_age_ms=60000")
    server.add_argument("--grpc_server", choices=("grpcio", "native"), default="grpcio",
                        help="gRPC implementation: grpcio (grpc.aio, the default) or native (HTTP/2 on libnghttp2 in "
                             "the event loop, ModelInfer of small models answered in place: about 3x the calls/s; "
                             "same services and messages; see README)")
    server.add_argument("--rest_server", choices=("native", "aiohttp"), default="native",
                        help="REST front: native (the default: plain KServe infer requests are read straight off "
                             "the socket, everything else goes to aiohttp) or aiohttp (aiohttp answers every request)")
    server.add_argument("--log_level", default=os.environ.get("LOG_LEVEL", "INFO"),
                        help="TRACE, DEBUG, INFO, WARNING or ERROR (env LOG_LEVEL)")
    server.add_argument("--log_path", default=os.environ.get("LOG_PATH"), help="log file (env LOG_PATH)")
    server.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                        help="seconds between checks of config.json and version directories (0: never)")
    server.add_argument("--drain_timeout_seconds", type=float, default=30,
                        help="on SIGTERM/SIGINT: seconds to let requests and streams in flight finish (the server "
                             "stops being ready and refuses new requests at once); a second signal ends at once")
    server.add_argument("--cache_dir", default="",
                        help="directory for OpenVINO's compiled-model cache (faster restarts); models may opt out "
                             "with allow_cache: false")
    server.add_argument("--model_repository_cache", default="",
                        help="where models from s3://, gs:// and az:// repositories are downloaded (kept across "
                             "restarts); default: a temporary directory removed at exit")
    server.add_argument("--model_download_api", action="store_true",
                        help="serve the model download API (/api/v1, as python -m ovms.download) on the REST port, "
                             "downloading into --model_repository_path or the config file's directory")
    server.add_argument("--metrics_enable", action="store_true", help="serve Prometheus metrics on /metrics")
    server.add_argument("--metrics_list", default="", help="comma-separated metric families to enable")
    model = parser.add_argument_group("model (single-model mode; exclusive with --config_path)")
    model.add_argument("--config_path", default="", help="config.json with model_config_list")
    model.add_argument("--model_name", default="", help="name clients use for the model")
    model.add_argument("--model_path", default="", help="directory with numeric version subdirectories, or one "
                       "model file (.xml, .onnx, .pdmodel, .pb, .tflite) served as version 1")
    model.add_argument("--target_device", default="", help="OpenVINO device: CPU (default), GPU, AUTO, ...")
    model.add_argument("--nireq", type=int, default=0, help="parallel infer requests (0: device optimum)")
    model.add_argument("--plugin_config", default="", help='device properties as JSON, e.g. {"NUM_STREAMS": "2"}')
    model.add_argument("--batch_size", default="", help='batch size: a number, a range "1:8" or "auto"')
    model.add_argument("--shape", default="", help='input shape "(1,3,224,224)", "auto", or JSON per input')
    model.add_argument("--layout", default="", help='input layout "NCHW", "NHWC:NCHW", or JSON per input')
    model.add_argument("--mean", default="", help='subtracted from the input per channel, inside the model: '
                       '"[123.675,116.28,103.53]" or one number (needs --layout)')
    model.add_argument("--scale", default="", help='the input is divided by it per channel, after --mean: '
                       '"[58.395,57.12,57.375]" or one number (needs --layout)')
    model.add_argument("--color_format", default="", help="TARGET:SOURCE, e.g. BGR:RGB: clients send SOURCE, the "
                       "model gets TARGET (RGB, BGR, GRAY, NV12, NV12_2, I420, I420_3; needs --layout)")
    model.add_argument("--precision", default="", help="TARGET:SOURCE, e.g. uint8:fp32: clients send TARGET, the "
                       "model gets SOURCE (needs --layout)")
    model.add_argument("--model_version_policy", default="",
                       help='e.g. {"latest": {"num_versions": 2}}, {"all": {}}, {"specific": {"versions": [1]}}')
    openai = parser.add_argument_group("OpenAI-compatible endpoints (/v3)")
    openai.add_argument("--api_key_file", default="", help="file holding the API key clients must send as "
                        "'Authorization: Bearer <key>' (env API_KEY also sets it)")
    openai.add_argument("--allowed_origins", default="*", help="CORS: comma-separated origins allowed")
    openai.add_argument("--allowed_methods", default="*", help="CORS: methods allowed")
    openai.add_argument("--allowed_headers", default="*", help="CORS: headers allowed")
    openai.add_argument("--allow_credentials", action="store_true", help="CORS: allow credentials")
    openai.add_argument("--allowed_local_media_path", default="",
                        help="directory a VLM request may take images from by path (image_url \"/dir/cat.png\"); "
                        "without it, images come inline (data:image/...;base64,) or from --allowed_media_domains")
    openai.add_argument("--allowed_media_domains", default="",
                        help="comma-separated hosts the server may download image_url images from (http, https), "
                        "matched exactly (a.com does not allow b.a.com); 'all' allows any host. Default: none")
    openai.add_argument("--verbose_response", nargs="?", const="true", default="false", choices=("true", "false"),
                        help="add a \"__verbose\" object to chat and completion answers (the last chunk of a "
                        "stream): the prompt after the chat template and the raw output with its special tokens, "
                        "before tool and reasoning parsing. For debugging templates and parsers. Default false")
    pull_cli.add_arguments(parser)
    return parser


def openai_settings(args: argparse.Namespace):
    """The OpenAI endpoints' HTTP options; the key from --api_key_file, else the API_KEY environment variable."""
    from ovms.transport.openai_rest import OpenAISettings

    key = os.environ.get("API_KEY") or None
    if args.api_key_file:
        try:
            key = pathlib.Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --api_key_file {args.api_key_file}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"--api_key_file {args.api_key_file} is empty")
    media_path = None
    if args.allowed_local_media_path:
        media_path = pathlib.Path(args.allowed_local_media_path).expanduser()
        if not media_path.is_dir():
            raise ConfigError(f"--allowed_local_media_path {args.allowed_local_media_path} is not a directory")
    return OpenAISettings(api_key=key, allowed_origins=args.allowed_origins, allowed_methods=args.allowed_methods,
                          allowed_headers=args.allowed_headers, allow_credentials=args.allow_credentials,
                          allowed_local_media_path=str(media_path) if media_path else None,
                          allowed_media_domains=tuple(d for d in args.allowed_media_domains.split(",") if d.strip()),
                          verbose_response=args.verbose_response == "true")


def validate(args: argparse.Namespace) -> None:
    """OVMS's checks of the server flags (src/config.cpp), with its messages."""
    if args.config_path and (args.model_name or args.model_path):
        raise UsageError("Use either config_path or model_path with model_name")
    if not args.config_path and not (args.model_name and args.model_path):
        raise UsageError("Use config_path or model_path with model_name")
    if args.config_path and (args.batch_size or args.shape or args.nireq or args.model_version_policy
                             or args.target_device or args.plugin_config or args.mean or args.scale
                             or args.color_format or args.precision):
        raise UsageError("Model parameters in CLI are exclusive with the config file")
    for flag in ("mean", "scale", "color_format", "precision"):  # OVMS src/cli_parser.cpp
        if getattr(args, flag) and not args.layout:
            raise UsageError(f"error parsing options - --{flag} parameter requires --layout to be set")
    cores = os.cpu_count() or 1
    if not 0 <= args.drain_timeout_seconds <= 24 * 3600:
        raise UsageError("drain_timeout_seconds should be from 0 to 86400")
    channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
    if args.grpc_server == "native":
        from ovms.transport.grpc_native import SUPPORTED_OPTIONS

        unknown = sorted({name for name, _ in channel_arguments} - SUPPORTED_OPTIONS)
        if unknown:
            raise UsageError(f"grpc_channel_arguments: {', '.join(unknown)} is not implemented by --grpc_server native"
                             f" (it implements {', '.join(sorted(SUPPORTED_OPTIONS))}); remove it, or serve with "
                             "--grpc_server grpcio")
    if not 1 <= args.grpc_workers <= cores:
        raise UsageError(f"grpc_workers count should be from 1 to CPU core count : {cores}")
    if args.rest_workers is not None:
        if not 2 <= args.rest_workers <= 10_000:
            raise UsageError("rest_workers count should be from 2 to 10000")
        if args.rest_port == 0:
            raise UsageError("rest_workers is set but rest_port is not set. rest_port is required to start rest "
                             "servers")
    if not 0 <= args.port <= MAX_PORT:
        raise UsageError(f"port number out of range from 0 to {MAX_PORT}")
    if not 0 <= args.rest_port <= MAX_PORT:
        raise UsageError(f"rest_port number out of range from 0 to {MAX_PORT}")
    if args.metrics_enable and args.rest_port == 0:
        raise UsageError("rest_port setting is missing, metrics are enabled on rest port")
    if args.metrics_list and not args.metrics_enable:
        raise UsageError("metrics_enable setting is missing, required when metrics_list is provided")
    if args.port == args.rest_port:
        raise UsageError("port and rest_port cannot have the same values")
    if args.log_level not in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError("log_level should be one of: TRACE, DEBUG, INFO, WARNING, ERROR")


def parse_channel_arguments(text: str) -> tuple[tuple[str, object], ...]:
    """``grpc.x=1,grpc.y=text`` as gRPC server options (integers where the value is one)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().startswith("grpc.") or not value.strip():
            raise UsageError(f"grpc_channel_arguments: {item!r} is not name=value with a grpc.* name, e.g. "
                             "grpc.max_concurrent_streams=64")
        value = value.strip()
        pairs.append((name.strip(), int(value) if value.lstrip("-").isdigit() else value))
    return tuple(pairs)


def single_model(args: argparse.Namespace):
    """The ModelConfig of single-model mode: a versioned model, or a graph directory / GenAI model with a task."""
    from ovms.config import graph_config, model_config_from_dict

    path = pathlib.Path(args.model_path)
    task = getattr(args, "task", None)
    if is_remote(args.model_path) and task:  # a GenAI model in a bucket: mirrored whole, then served with the task
        from ovms.config import ModelConfig

        model_config_from_dict({"name": args.model_name, "base_path": args.model_path}, where="command line")
        return ModelConfig(name=args.model_name, base_path=pathlib.Path(), kind="graph", task=task,
                           graph_text=pull_cli.task_graph_text(args, task, args.model_name),
                           source_url=args.model_path)
    if task == "text_generation" and path.suffix.lower() == ".gguf" and path.is_file():
        # A GGUF file: its directory is the graph's, the file its models_path (as --pull --gguf_filename writes)
        text = pull_cli.task_graph_text(args, task, args.model_name, models_path=f"./{path.name}")
        return graph_config(args.model_name, path.parent, task=task, where="command line", graph_text=text)
    if (path / "graph.pbtxt").is_file() or task:
        text = pull_cli.task_graph_text(args, task, args.model_name) if task else None
        return graph_config(args.model_name, path, task=task, where="command line", graph_text=text)
    return model_config_from_dict(single_model_entry(args), where="command line")


def single_model_entry(args: argparse.Namespace) -> dict:
    """The config.json entry equivalent to the single-model flags."""
    entry: dict = {"name": args.model_name, "base_path": args.model_path}
    if args.target_device:
        entry["target_device"] = args.target_device
    if args.nireq:
        entry["nireq"] = args.nireq
    if args.plugin_config:
        entry["plugin_config"] = args.plugin_config
    if args.batch_size:
        entry["batch_size"] = args.batch_size
    for field in ("shape", "layout"):
        value = getattr(args, field)
        if value:
            entry[field] = json.loads(value) if value.lstrip().startswith("{") else value
    if args.model_version_policy:
        entry["model_version_policy"] = args.model_version_policy
    for field in ("mean", "scale", "color_format", "precision"):
        if getattr(args, field):
            entry[field] = getattr(args, field)
    return entry


def _version_text() -> str:
    from ovms.server import backend_versions

    return f"OpenVINO Model Server (Python) {__version__}\n{backend_versions()}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            print(_version_text())
            sys.exit(0)
        if args.log_level in logging_setup.LEVELS:
            logging_setup.configure(args.log_level, args.log_path)
        if pull_cli.wants_pull(args):
            code, model_dir = pull_cli.run(args, serve_after=not getattr(args, "pull", False))
            if getattr(args, "pull", False) or code != 0 or model_dir is None:
                sys.exit(code)
            args.model_path = str(model_dir)
            args.model_name = args.model_name or getattr(args, "source_model", "")
        validate(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        sys.exit(EX_USAGE)
    sys.exit(serve(args))


def serve(args: argparse.Namespace) -> int:
    from ovms.config import load_config_file, load_monitoring
    from ovms.metrics import parse_families
    from ovms import workers
    from ovms.server import Server, ServerSettings

    from ovms.repository.storage import read_text

    config_path = args.config_path if is_remote(args.config_path) else pathlib.Path(args.config_path) \
        if args.config_path else None
    metrics_enable, metrics_list = args.metrics_enable, args.metrics_list or None
    try:
        if config_path is not None:
            load_config_file(config_path, read_text=read_text)  # fail fast, before listening, on a broken file
            models = None
            file_enable, file_list = load_monitoring(config_path, read_text=read_text)
            metrics_enable = metrics_enable or file_enable
            metrics_list = metrics_list or file_list
        else:
            models = [single_model(args)]
        families = parse_families(metrics_list) if metrics_enable else frozenset()
        openai = openai_settings(args)
    except (ConfigError, json.JSONDecodeError, ValueError) as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 1
    settings = ServerSettings(grpc_port=args.port or None, rest_port=args.rest_port or None,
                              grpc_bind_address=args.grpc_bind_address, rest_bind_address=args.rest_bind_address,
                              grpc_workers=args.grpc_workers, rest_workers=args.rest_workers,
                              poll_seconds=max(0, args.file_system_poll_wait_seconds), metrics_families=families,
                              openai=openai, cache_dir=args.cache_dir or None,
                              grpc_channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
                              grpc_server=args.grpc_server, rest_server=args.rest_server,
                              repository_cache=args.model_repository_cache or None)
    if args.model_download_api:
        if not args.rest_port:
            print("--model_download_api needs --rest_port", file=sys.stderr)
            return EX_USAGE
        models_dir = getattr(args, "model_repository_path", None) or (
            str(pathlib.Path(args.config_path).parent) if args.config_path and "://" not in args.config_path else "")
        if not models_dir:
            print("--model_download_api needs --model_repository_path or a local --config_path", file=sys.stderr)
            return EX_USAGE
        from ovms.download.routes import add_routes
        from ovms.download.service import DownloadService
        from ovms.transport import rest_server

        rest_server.EXTRA_ROUTES.append(lambda app: add_routes(app, DownloadService(pathlib.Path(models_dir))))
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        import asyncio  # here, not at the top: `--pull` never needs it (45 ms of its start-up, -X importtime)

        runner = asyncio.run
    index, children = workers.fork(settings.grpc_workers if settings.grpc_port else 1)
    if settings.grpc_workers > 1:
        settings.reuse_port = True
        if index > 0:  # extra workers serve gRPC only
            settings.rest_port = None
            settings.metrics_families = frozenset()
            # Text generation is served over REST only (worker 0): here an LLM starts its generation worker (and
            # loads the weights again) only if a request ever needs it, which none will.
            os.environ["OVMS_GENAI_WORKER_START"] = "lazy"
    try:
        server = Server(settings, models, config_path=config_path)
        code = runner(server.run_until_signalled(drain_timeout=args.drain_timeout_seconds,
                                                 on_drain=lambda: workers.signal(children)))
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Cannot start the server: {exc}", file=sys.stderr)
        return 1
    finally:
        workers.stop(children, timeout=args.drain_timeout_seconds + 5)
    return code
