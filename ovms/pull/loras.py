"""``--source_loras``: LoRA adapters of an image generation model, pulled next to it and named in its graph.

The syntax, checks and messages follow OVMS 2026.2 (src/graph_export/image_generation_graph_cli_parser.cpp):
``alias=source[:alpha]`` entries separated by commas, where a source is a Hugging Face repository
(``org/repo``, or ``org/repo@file.safetensors``), a local ``.safetensors`` path (``/...``, ``./...``) or an
``http(s)://`` URL, and ``alias=@a:0.7+@b:0.5`` blends earlier aliases. A repository's adapter lands in
``loras/<org>/<repo>/<file>`` inside the model directory, the path OVMS writes into the graph
(graph_export.cpp); a local file is named by its absolute path.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re

from ovms.pull.errors import UsageError

log = logging.getLogger("ovms.pull")

_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(slots=True)
class LoraSource:
    alias: str
    kind: str  # "hf", "local" or "url"
    source: str  # org/repo, the local path, or the URL
    file: str | None = None  # the .safetensors file (a repository's: None until resolved)
    alpha: float | None = None
    path: str = ""  # what the graph names: loras/org/repo/file, or the local file's absolute path


@dataclasses.dataclass(slots=True)
class CompositeLora:
    alias: str
    components: list[tuple[str, float]]  # (adapter alias, alpha)


def _usage(message: str) -> UsageError:
    return UsageError(message, remedy="--source_loras takes alias=org/repo[@file.safetensors][:alpha], "
                                      "alias=/path/file.safetensors[:alpha] or alias=@a:0.7+@b:0.5, comma separated.")


def _is_local(source: str) -> bool:
    return source.startswith(("/", "./", ".\\")) or re.match(r"^[A-Za-z]:[\\/]", source) is not None


def parse(text: str) -> tuple[list[LoraSource], list[CompositeLora]]:
    """The adapters and composites of a --source_loras value, checked as OVMS checks them."""
    entries = [e for e in text.split(",") if e]
    adapters: list[LoraSource] = []
    for entry in entries:
        alias, eq, source = entry.partition("=")
        if not eq:
            raise _usage(f"Missing alias in --source_loras entry: '{entry}'. Expected format: alias=source")
        if not alias or not source:
            raise _usage(f"Invalid --source_loras entry: '{entry}'. Alias and source must not be empty.")
        if not _ALIAS.match(alias):
            raise _usage(f"Invalid LoRA alias '{alias}' in --source_loras entry: '{entry}'. Alias must contain only "
                         "alphanumeric characters, hyphens, underscores, or dots.")
        if source.startswith("@"):
            continue
        adapter = LoraSource(alias, "hf", source)
        colon = source.rfind(":")
        if colon > 1 and not source[colon + 1:].startswith("//"):
            value = source[colon + 1:]
            try:
                adapter.alpha = float(value)
            except ValueError:
                raise _usage(f"Invalid alpha value '{value}' in --source_loras entry: '{entry}'") from None
            source = source[:colon]
        if source.startswith(("https://", "http://")):
            adapter.kind, adapter.source = "url", source
            adapter.file = source.rsplit("/", 1)[-1]
            if not adapter.file:
                raise _usage(f"Cannot extract filename from URL in --source_loras entry: '{entry}'")
            if not adapter.file.endswith(".safetensors"):
                raise _usage(f"URL must point to a .safetensors file in --source_loras entry: '{entry}'")
        elif _is_local(source):
            adapter.kind, adapter.source = "local", source
            if not source.endswith(".safetensors"):
                raise _usage(f"Local path must point to a .safetensors file in --source_loras entry: '{entry}'")
            if not pathlib.Path(source).is_file():
                raise _usage(f"Local LoRA file does not exist: '{source}' in --source_loras entry: '{entry}'")
            adapter.file = pathlib.Path(source).name
            adapter.path = str(pathlib.Path(source).resolve())
        else:
            repo, at, file = source.partition("@")
            if at and not file:
                raise _usage(f"Empty filename after @ in --source_loras entry: '{entry}'")
            if not repo:
                raise _usage(f"Invalid --source_loras entry: '{entry}'. HF repo source must not be empty.")
            adapter.source, adapter.file = repo, file or None
        adapters.append(adapter)
    known = {a.alias for a in adapters}
    composites = []
    for entry in entries:
        alias, _, source = entry.partition("=")
        if not source.startswith("@"):
            continue
        components = []
        for token in source.split("+"):
            if not token.startswith("@"):
                raise _usage(f"Invalid composite LoRA component '{token}' in entry: '{entry}'. Each component must "
                             "start with @")
            ref, colon, value = token[1:].partition(":")
            try:
                alpha = float(value) if colon else 1.0
            except ValueError:
                raise _usage(f"Invalid alpha '{value}' in composite LoRA component: '{token}'") from None
            if not ref:
                raise _usage(f"Empty adapter reference in composite LoRA component: '{token}'")
            if ref not in known:
                raise _usage(f"Composite LoRA references unknown adapter '{ref}' in entry: '{entry}'")
            components.append((ref, alpha))
        composites.append(CompositeLora(alias, components))
    return adapters, composites


def check_servable_without_pull(adapters: list[LoraSource]) -> None:
    """Serving a directory with --task (no pull) can name local adapter files only."""
    for adapter in adapters:
        if adapter.kind != "local":
            raise _usage(f"--source_loras {adapter.alias}={adapter.source}: a {_KIND[adapter.kind]} adapter is "
                         "downloaded by a pull (--pull or --source_model); serving a local directory takes local "
                         ".safetensors paths only.")


_KIND = {"hf": "Hugging Face repository", "url": "URL", "local": "local"}


def fetch(adapters: list[LoraSource], model_dir: pathlib.Path, pull_one) -> None:
    """Download every repository adapter into ``model_dir/loras/<org>/<repo>/`` with ``pull_one(repo_id,
    directory, select)``, and set each adapter's graph path. URL sources are refused: this ovms downloads from
    the hub only."""
    for adapter in adapters:
        if adapter.kind == "url":
            raise UsageError(f"--source_loras {adapter.alias}={adapter.source}: URL sources are not supported by "
                             "this ovms.", remedy="Download the .safetensors file and give its path "
                                                  "(alias=/path/file.safetensors), or its Hugging Face repository.")
        if adapter.kind != "hf":
            continue
        directory = model_dir.joinpath("loras", *adapter.source.split("/"))

        def select(files, adapter=adapter):
            names = [f.path for f in files if f.path.endswith(".safetensors")]
            if adapter.file is None:
                if len(names) != 1:
                    raise UsageError(
                        f"--source_loras {adapter.alias}={adapter.source}: the repository has "
                        f"{len(names)} .safetensors files ({', '.join(names) or 'none'}); name one.",
                        remedy=f"Use {adapter.alias}={adapter.source}@FILE.safetensors.")
                adapter.file = names[0]
            chosen = [f for f in files if f.path == adapter.file]
            if not chosen:
                raise UsageError(f"--source_loras {adapter.alias}: {adapter.source} has no file {adapter.file}.",
                                 remedy=f"Its .safetensors files: {', '.join(names) or 'none'}.")
            return chosen

        pull_one(adapter.source, directory, select)
        if adapter.file is None:  # pulled before (select not called): the one .safetensors file it brought
            found = sorted(p.name for p in directory.glob("*.safetensors"))
            if len(found) != 1:
                raise UsageError(f"--source_loras {adapter.alias}: {directory} holds {len(found)} .safetensors "
                                 "files; name one.", remedy=f"Use {adapter.alias}={adapter.source}@FILE.safetensors.")
            adapter.file = found[0]
        adapter.path = "/".join(("loras", adapter.source, adapter.file or ""))
        log.info("LoRA adapter %s: %s", adapter.alias, adapter.path)
