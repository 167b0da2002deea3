"""Pull-mode flags of the ``ovms`` command line, and what they do.

The core's ``ovms/cli.py`` builds one parser and calls :func:`add_arguments`, :func:`wants_pull` and
:func:`run`. ``--model_name``, ``--target_device``, ``--config_path`` and ``--log_level`` belong to the core;
this module only reads them. Flag names, defaults and messages are OVMS's (``src/cli_parser.cpp``,
``src/graph_export/*_cli_parser.cpp``).
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import shutil
import signal
import sys
import textwrap
import threading

from ovms.pull import config_edit, convert, gguf, graph, loras, tasks
from ovms.pull.errors import EXIT_OK, InterruptedPull, PullError, UsageError
from ovms.pull.hub import HubClient
from ovms.pull.paths import ModelPaths, check_repo_id, draft_directory_name
from ovms.pull.pull import fetch_small, pull_repository
from ovms.pull.settings import from_environment

log = logging.getLogger("ovms.pull")

BOOL_CHOICES = ("true", "false")


def _add(group, *names: str, **kwargs) -> None:
    """Add an option unless the core already defines one of its names (argparse refuses duplicates)."""
    container = getattr(group, "_container", group)
    if any(name in container._option_string_actions for name in names):
        return
    group.add_argument(*names, **kwargs)


def _wrap(text: str) -> str:
    """Pre-wrapped, for the core's RawDescriptionHelpFormatter (which prints descriptions as they are)."""
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All pull-mode flags (not --model_name/--target_device/--config_path/--log_level: the core adds those)."""
    g = parser.add_argument_group(
        "pull mode", _wrap("Download a model from Hugging Face (HF_ENDPOINT, HF_TOKEN, https_proxy are honoured) "
                     "into MODEL_REPOSITORY_PATH/ORG/NAME, every file checked against the hub's sha256 / git "
                     "sha1. With --pull ovms exits after the download; without it, it serves the model. An "
                     "interrupted pull (Ctrl+C, kill, power cut) resumes when the same command is run again. "
                     "Environment: GIT_LFS_RESUME_ATTEMPTS (retries per file, default 5, 0 = no resume), "
                     "GIT_LFS_RESUME_INTERVAL_SECONDS (default 10), OVMS_PULL_CONNECTIONS (most "
                     "connections, default 32; it starts with OVMS_PULL_INITIAL_CONNECTIONS, default 8, and adds "
                     "more while the total rate grows), "
                     "OVMS_PULL_STALL_SECONDS (abort a silent transfer, default 30), OVMS_PULL_SYNC=0 (skip "
                     "fdatasync; faster, not power-cut safe), OVMS_PULL_DIRECT_IO=0 (write large files through "
                     "the page cache instead of O_DIRECT)."))
    _add(g, "--pull", action="store_true", help="Pull the model and exit (no serving).")
    _add(g, "--source_model", metavar="ORG/NAME", help="Hugging Face repository to pull, e.g. "
                                                       "OpenVINO/Qwen3-8B-int4-ov.")
    _add(g, "--model_repository_path", metavar="PATH", help="Directory of models; the pull lands in "
                                                            "PATH/ORG/NAME/.")
    _add(g, "--task", metavar="TASK", help="text_generation, embeddings, rerank, image_generation, text2speech or "
                                           "speech2text; inferred from the repository's config.json / "
                                           "model_index.json when absent.")
    _add(g, "--overwrite_models", action="store_true", help="Delete the local copy and download it again.")
    _add(g, "--revision", default="main", metavar="REV", help="Branch, tag or commit to pull (default main).")
    _add(g, "--gguf_filename", metavar="FILE.gguf", help="Pull only this GGUF file (all parts of a split "
                                                         "NAME-00001-of-0000N.gguf); text_generation only.")
    _add(g, "--weight-format", dest="weight_format", metavar="FORMAT",
         help="Convert a model outside the OpenVINO organization with optimum-cli to this precision "
              "(fp32, fp16, int8, int4, ...); needs optimum-intel installed.")
    _add(g, "--extra_quantization_params", metavar="PARAMS", help="Extra optimum-cli flags, e.g. "
                                                                  "'--sym --group-size -1 --ratio 1.0'.")
    _add(g, "--source_loras", metavar="LIST", help="image_generation: LoRA adapters pulled into loras/ and named in "
                                                   "the graph: alias=org/repo[@file.safetensors][:alpha], "
                                                   "alias=/path/file.safetensors[:alpha], alias=@a:0.7+@b:0.5, ...")
    _add(g, "--list_models", action="store_true", help="List servables in --model_repository_path and exit.")
    _add(g, "--add_to_config", action="store_true", help="Add --model_name (at --model_path or "
                                                         "--model_repository_path/NAME) to --config_path and exit.")
    _add(g, "--remove_from_config", action="store_true", help="Remove --model_name from --config_path and exit.")

    t = parser.add_argument_group("pull mode: text_generation graph options")
    _add(t, "--max_num_seqs", type=int, default=256, help="Sequences processed together (default 256).")
    _add(t, "--pipeline_type", choices=("LM", "LM_CB", "VLM", "VLM_CB", "AUTO"), help="Default AUTO.")
    _add(t, "--enable_prefix_caching", choices=BOOL_CHOICES, default="true", help="Cache prompt tokens "
                                                                                   "(default true).")
    _add(t, "--cache_size", type=int, default=10, help="KV cache size in GB (default 10).")
    _add(t, "--max_num_batched_tokens", type=int, help="Tokens batched together (default: engine's choice).")
    _add(t, "--dynamic_split_fuse", choices=BOOL_CHOICES, default="true", help="Default true.")
    _add(t, "--draft_source_model", help="Draft model directory for speculative decoding.")
    _add(t, "--tool_parser", help="Tool-call parser: llama3, hermes3, phi4, mistral, gptoss, qwen3coder, devstral, "
                                  "lfm2, gemma4, onyx, minicpm5, or none (default: detected from the chat template).")
    _add(t, "--reasoning_parser", help="Reasoning parser: qwen3, gemma4, gptoss, onyx, minicpm5, lfm2, or none "
                                       "(default: detected from the chat template).")
    _add(t, "--enable_tool_guided_generation", choices=BOOL_CHOICES, default="false", help="Default false.")
    _add(t, "--kv_cache_precision", help="u8 to halve the KV cache (default: model's).")
    _add(t, "--max_prompt_len", type=int, help="NPU: maximum prompt tokens.")
    _add(t, "--model_distribution_policy", help="e.g. TENSOR_PARALLEL, PIPELINE_PARALLEL.")

    e = parser.add_argument_group("pull mode: embeddings / rerank graph options")
    _add(e, "--pooling", choices=("CLS", "LAST", "MEAN"), default="CLS", help="Embeddings pooling (default CLS).")
    _add(e, "--normalize", choices=BOOL_CHOICES, default="true", help="Normalize embeddings (default true).")
    _add(e, "--truncate", choices=BOOL_CHOICES, default="false", help="Truncate long inputs (default false).")
    _add(e, "--num_streams", type=int, default=1, help="NUM_STREAMS plugin setting (default 1).")
    _add(e, "--max_allowed_chunks", type=int, default=10000, help="Rerank: chunks per request (default 10000).")

    a = parser.add_argument_group("pull mode: text2speech / speech2text graph options (and --num_streams)")
    _add(a, "--model_type", choices=("speecht5", "kokoro"), default="speecht5",
         help="text2speech: type of the source model (default speecht5).")
    _add(a, "--vocoder", metavar="ORG/NAME", help="text2speech: vocoder for optimum-cli export, e.g. "
                                                  "microsoft/speecht5_hifigan (conversion only).")

    i = parser.add_argument_group("pull mode: image_generation graph options")
    _add(i, "--resolution", default="", help="Fixed WxH, e.g. 512x512.")
    _add(i, "--max_resolution", default="", help="Largest WxH a request may ask for.")
    _add(i, "--default_resolution", default="", help="WxH when a request gives none.")
    _add(i, "--num_images_per_prompt", type=int)
    _add(i, "--guidance_scale", type=float)
    _add(i, "--max_num_images_per_prompt", type=int)
    _add(i, "--default_num_inference_steps", type=int)
    _add(i, "--max_num_inference_steps", type=int)


def wants_pull(args: argparse.Namespace) -> bool:
    """True when the command line asks for pull mode, pull-and-serve, or a model-repository edit."""
    return bool(getattr(args, "pull", False) or getattr(args, "source_model", None)
                or getattr(args, "list_models", False) or getattr(args, "add_to_config", False)
                or getattr(args, "remove_from_config", False))


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag the download loop polls, so it can record progress and exit cleanly."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict = {}

    def __call__(self) -> str | None:
        return self.name

    def _handle(self, signum, frame) -> None:
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.name = signal.Signals(signum).name

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def graph_options(args: argparse.Namespace, task: str, model_name: str, models_path: str) -> graph.GraphOptions:
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return graph.GraphOptions(
        model_name=model_name, target_device=get("target_device") or "CPU", models_path=models_path,
        max_num_seqs=get("max_num_seqs", 256), enable_prefix_caching=get("enable_prefix_caching", "true"),
        cache_size=get("cache_size", 10), pipeline_type=get("pipeline_type"),
        max_num_batched_tokens=get("max_num_batched_tokens"), reasoning_parser=get("reasoning_parser"),
        tool_parser=get("tool_parser"), enable_tool_guided_generation=get("enable_tool_guided_generation", "false"),
        dynamic_split_fuse=get("dynamic_split_fuse", "true"), draft_source_model=get("draft_source_model"),
        kv_cache_precision=get("kv_cache_precision"), max_prompt_len=get("max_prompt_len"),
        model_distribution_policy=get("model_distribution_policy"), num_streams=get("num_streams", 1),
        normalize=get("normalize", "true"), truncate=get("truncate", "false"), pooling=get("pooling", "CLS"),
        max_allowed_chunks=get("max_allowed_chunks", 10000), resolution=get("resolution", ""),
        max_resolution=get("max_resolution", ""), default_resolution=get("default_resolution", ""),
        num_images_per_prompt=get("num_images_per_prompt"), guidance_scale=get("guidance_scale"),
        max_num_images_per_prompt=get("max_num_images_per_prompt"),
        default_num_inference_steps=get("default_num_inference_steps"),
        max_num_inference_steps=get("max_num_inference_steps"),
        plugin_config=get("plugin_config") or "", model_type=get("model_type", "speecht5"),
        vocoder=get("vocoder"))


def task_graph_text(args: argparse.Namespace, task: str, model_name: str, *, models_path: str = "./") -> str | None:
    """The graph.pbtxt that --pull would write for these flags: serving a model directory with --task and no
    graph file takes its options (--max_num_seqs, --pipeline_type, --tool_parser, ...) from it, as OVMS does."""
    if task not in graph.TASKS:
        return None
    options = graph_options(args, task, model_name, models_path)
    if getattr(args, "source_loras", None):  # serving a directory: a configuration error (ValueError), not a pull's
        if task != "image_generation":
            raise ValueError(f"--source_loras applies to image generation, not --task {task}; drop it")
        try:
            adapters, composites = loras.parse(args.source_loras)
            loras.check_servable_without_pull(adapters)
        except UsageError as exc:
            raise ValueError(str(exc).replace("\n", " ")) from None
        options.lora_adapters = [(a.alias, a.path, a.alpha) for a in adapters]
        options.composite_lora_adapters = [(c.alias, c.components) for c in composites]
    return graph.render(task, options)


def _require(args: argparse.Namespace, mode: str, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n, None)]
    if missing:
        raise UsageError(f"{mode} requires {' and '.join(missing)}.",
                         remedy="Run `python -m ovms --help` for the pull-mode options.")


def _local_task(model_dir: pathlib.Path) -> str | None:
    def read(name: str) -> bytes | None:
        p = model_dir / name
        return p.read_bytes() if p.is_file() else None

    names = [p.relative_to(model_dir).as_posix() for p in model_dir.glob("*/*")]
    if tasks.is_classic_layout(names):
        return None
    return tasks.infer_task(read("config.json"), read("model_index.json"))


def _remote_task(settings, repo_id: str, revision: str) -> str | None:
    hub = HubClient(settings)
    try:
        present, found = fetch_small(hub, settings, repo_id, revision, ["config.json", "model_index.json"])
    finally:
        hub.close()
    if tasks.is_classic_layout(present):
        return None
    return tasks.infer_task(found["config.json"], found["model_index.json"])


def _check_parser_names(args: argparse.Namespace) -> None:
    """Refuse, before downloading, parser names OVMS does not have, as OVMS's graph_cli_parser.cpp does."""
    if not (getattr(args, "reasoning_parser", None) or getattr(args, "tool_parser", None)):
        return  # nothing to check, and the parsers' import costs a pull ~35 ms
    from ovms.genai.parsers import DISABLED, REASONING_PARSERS, TOOL_PARSERS

    for flag, names in (("reasoning_parser", REASONING_PARSERS), ("tool_parser", TOOL_PARSERS)):
        value = getattr(args, flag, None)
        if value and value != DISABLED and value not in names:
            kind = flag.replace("_", " ")
            raise UsageError(f'Unsupported {flag}: "{value}". Supported {kind}s are: {", ".join(names)}',
                             remedy=f'Use one of them, or "{DISABLED}" to turn the {kind} off.')


def _pull(args: argparse.Namespace, stop: _StopOnSignal) -> pathlib.Path:
    _require(args, "Pull mode", "source_model", "model_repository_path")
    _check_parser_names(args)
    repo_id = check_repo_id(args.source_model)
    task = getattr(args, "task", None)
    if task is not None and task not in graph.TASKS:
        raise UsageError(f"--task {task!r} is not supported.",
                         remedy=f"Use one of: {', '.join(graph.TASKS)}.")
    gguf_name = getattr(args, "gguf_filename", None)
    if gguf_name:
        gguf.check_filename(gguf_name, task)
        task = "text_generation"
    lora_adapters, lora_composites = loras.parse(args.source_loras) if getattr(args, "source_loras", None) \
        else ([], [])
    settings = from_environment()
    paths = ModelPaths(pathlib.Path(args.model_repository_path).expanduser(), repo_id)
    overwrite = bool(getattr(args, "overwrite_models", False))
    revision = getattr(args, "revision", None) or "main"
    weight_format = getattr(args, "weight_format", None)
    extra = getattr(args, "extra_quantization_params", None)
    converting = bool(weight_format or extra) and not repo_id.startswith("OpenVINO/") and not gguf_name

    classic = False
    if task is None:
        if paths.model_dir.is_dir() and not paths.marker.exists() and not overwrite:
            task = _local_task(paths.model_dir)
        else:
            task = _remote_task(settings, repo_id, revision)
        classic = task is None
        if classic:
            log.info("%s is a classic model (numeric version directories): served as it is, no graph.pbtxt",
                     repo_id)
        else:
            log.info("Inferred --task %s for %s", task, repo_id)
    if converting and classic:
        raise UsageError(f"{repo_id} already holds OpenVINO models in version directories; nothing to convert.",
                         remedy="Drop --weight-format / --extra_quantization_params.")

    if converting:
        if paths.model_dir.is_dir() and not overwrite:
            log.info("Path already exists on local filesystem. Not downloading to path: %s", paths.model_dir)
        else:
            if paths.model_dir.exists():
                shutil.rmtree(paths.model_dir)
            convert.convert(repo_id, paths.model_dir, task, weight_format or "int8", extra,
                            vocoder=getattr(args, "vocoder", None),
                            model_type=getattr(args, "model_type", None) or "speecht5")
        model_dir = paths.model_dir
    elif gguf_name:
        names = gguf.part_names(gguf_name)
        result = pull_repository(paths, settings, revision=revision, overwrite=overwrite, stop_requested=stop,
                                 select=lambda files: gguf.select(files, gguf_name, repo_id),
                                 wanted_in_record=lambda record: all(n in record.get("files", {}) for n in names))
        model_dir = result.model_dir
    else:
        model_dir = pull_repository(paths, settings, revision=revision, overwrite=overwrite,
                                    stop_requested=stop).model_dir
    print(f"Model: {repo_id} downloaded to: {model_dir}", flush=True)
    draft = getattr(args, "draft_source_model", None)
    if draft:
        _pull_draft(args, draft, model_dir, task, settings, converting, overwrite, stop)
    if lora_adapters and task != "image_generation":
        raise UsageError(f"--source_loras applies to image generation, not --task {task or 'none (classic model)'}.",
                         remedy="Drop --source_loras, or pull a diffusers model with it.")
    if lora_adapters:
        def pull_one(repo: str, directory: pathlib.Path, select) -> None:
            check_repo_id(repo)
            pull_repository(ModelPaths(paths.repository, repo, directory=directory), settings, overwrite=overwrite,
                            stop_requested=stop, select=select)

        loras.fetch(lora_adapters, model_dir, pull_one)
    if classic:
        return model_dir
    models_path = f"./{gguf_name}" if gguf_name else "./"
    model_name = getattr(args, "model_name", None) or repo_id
    options = graph_options(args, task, model_name, models_path)
    options.lora_adapters = [(a.alias, a.path, a.alpha) for a in lora_adapters]
    options.composite_lora_adapters = [(c.alias, c.components) for c in lora_composites]
    graph.write_graph(model_dir, task, options)
    print(f"Graph: graph.pbtxt created in: {model_dir}", flush=True)
    return model_dir


def _pull_draft(args, draft: str, model_dir: pathlib.Path, task: str | None, settings, converting: bool,
                overwrite: bool, stop) -> None:
    """--draft_source_model: the draft model of speculative decoding, into the main model's directory as OVMS
    lays it out (ORG-NAME, named by draft_models_path in graph.pbtxt); converted like the main model when it is."""
    check_repo_id(draft)
    if task != "text_generation":
        raise UsageError(f"--draft_source_model applies to text generation, not --task {task}.",
                         remedy="Drop --draft_source_model, or pull an LLM with it.")
    target = model_dir / draft_directory_name(draft)
    if converting:
        if target.is_dir() and not overwrite:
            log.info("Path already exists on local filesystem. Not downloading to path: %s", target)
        else:
            if target.exists():
                shutil.rmtree(target)
            convert.convert(draft, target, task, getattr(args, "weight_format", None) or "int8",
                            getattr(args, "extra_quantization_params", None))
    else:
        paths = ModelPaths(model_dir, draft, directory=target)
        pull_repository(paths, settings, revision="main", overwrite=overwrite, stop_requested=stop)
    print(f"Draft model: {draft_directory_name(draft)} downloaded to: {target}", flush=True)


def _edit(args: argparse.Namespace) -> None:
    if getattr(args, "list_models", False):
        _require(args, "--list_models", "model_repository_path")
        names = config_edit.list_servables(pathlib.Path(args.model_repository_path))
        # OVMS's words (src/servables_config_manager_module)
        print(f"Available servables to serve from path: {args.model_repository_path} are: ")
        for name in names:
            print(name)
        return
    if getattr(args, "add_to_config", False):
        _require(args, "--add_to_config", "config_path", "model_name")
        base = getattr(args, "model_path", None)
        if not base:
            _require(args, "--add_to_config without --model_path", "model_repository_path")
            base = str(pathlib.Path(args.model_repository_path) / args.model_name)
        path = config_edit.add_model(args.config_path, args.model_name, base)
        print(f"Model {args.model_name} added to {path}")
        return
    _require(args, "--remove_from_config", "config_path", "model_name")
    path = config_edit.remove_model(args.config_path, args.model_name)
    print(f"Model {args.model_name} removed from {path}")


def run(args: argparse.Namespace, *, serve_after: bool) -> tuple[int, pathlib.Path | None]:
    """Do what the pull-mode flags ask. Returns (exit code, model directory to serve or None).

    Exit codes as the ovms binary: 0 success, 64 usage error, 1 failure (interrupted included); expected
    failures print what happened and what to do, never a traceback.
    """
    try:
        if (getattr(args, "list_models", False) or getattr(args, "add_to_config", False)
                or getattr(args, "remove_from_config", False)):
            _edit(args)
            return EXIT_OK, None
        with _StopOnSignal() as stop:
            model_dir = _pull(args, stop)
        return EXIT_OK, model_dir
    except InterruptedPull as exc:
        print(f"{exc.message} Partial downloads are kept.\n{exc.remedy}", file=sys.stderr, flush=True)
        return exc.exit_code, None
    except KeyboardInterrupt:
        print("Pull stopped. Re-run the same command to resume.", file=sys.stderr, flush=True)
        return 1, None
    except PullError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code, None
