"""Conversion of a PyTorch repository to OpenVINO IR with ``optimum-cli``, as OVMS's OptimumDownloader does.

Command lines follow OVMS ``src/pull_module/optimum_export.cpp``; ``convert_tokenizer`` adds the tokenizer IR
when the export left it out.
"""
from __future__ import annotations

import logging
import pathlib
import shlex
import shutil
import subprocess

from ovms.pull.errors import ConversionError

log = logging.getLogger("ovms.pull")

INSTALL_HINT = ('Install optimum-intel into the Python environment that runs ovms: '
                'pip install "optimum-intel[openvino]" openvino-tokenizers; or pull an already converted model '
                'from the OpenVINO organization (e.g. OpenVINO/<name>-int4-ov) without --weight-format.')


def export_command(source_model: str, target: pathlib.Path, task: str, weight_format: str,
                   extra_quantization_params: str | None) -> list[str]:
    cmd = ["optimum-cli", "export", "openvino"]
    if task in ("embeddings", "rerank"):
        cmd.append("--disable-convert-tokenizer")
    cmd += ["--model", source_model]
    if task != "image_generation":
        cmd.append("--trust-remote-code")
    cmd += ["--weight-format", weight_format]
    if task == "embeddings":
        # OVMS passes --library sentence_transformers; that IR has two outputs (token_embeddings,
        # sentence_embedding) and openvino_genai 2026.4's TextEmbeddingPipeline refuses it ("Model must have
        # exactly one output, got 2"). The transformers export has one (last_hidden_state); the graph's
        # pooling/normalize options then do what the sentence-transformers head did (tests/pull/test_real_export.py).
        cmd += ["--task", "feature-extraction", "--library", "transformers"]
    elif task == "rerank":
        cmd += ["--task", "text-classification"]
    if extra_quantization_params:
        cmd += shlex.split(extra_quantization_params)
    cmd.append(str(target))
    return cmd


def convert(source_model: str, target: pathlib.Path, task: str, weight_format: str,
            extra_quantization_params: str | None, *, env: dict | None = None) -> None:
    """Run the export (and convert_tokenizer if needed) into ``target``; ConversionError on any failure."""
    if shutil.which("optimum-cli", path=(env or {}).get("PATH")) is None:
        raise ConversionError(
            f"optimum-cli is not installed: converting {source_model} to OpenVINO IR (--weight-format "
            f"{weight_format}) needs optimum-intel.", remedy=INSTALL_HINT)
    cmd = export_command(source_model, target, task, weight_format, extra_quantization_params)
    log.info("Converting %s: %s", source_model, shlex.join(cmd))
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise ConversionError(f"optimum-cli failed (exit {result.returncode}) converting {source_model}.",
                              remedy="Read its output above; check --weight-format/--extra_quantization_params "
                                     "and that the model is supported by optimum-intel, then re-run.")
    if task in ("text_generation", "embeddings", "rerank") and not (target / "openvino_tokenizer.xml").exists():
        if shutil.which("convert_tokenizer", path=(env or {}).get("PATH")) is None:
            raise ConversionError("convert_tokenizer is not installed and the export has no tokenizer IR.",
                                  remedy="pip install openvino-tokenizers, then re-run with --overwrite_models.")
        tok = ["convert_tokenizer", source_model, "--with-detokenizer", "-o", str(target)]
        log.info("Adding the tokenizer IR: %s", shlex.join(tok))
        if subprocess.run(tok, env=env, check=False).returncode != 0:
            raise ConversionError(f"convert_tokenizer failed for {source_model}.",
                                  remedy="Read its output above, then re-run with --overwrite_models.")
