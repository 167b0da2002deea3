"""Conversion of a PyTorch repository to OpenVINO IR with ``optimum-cli``, as OVMS's OptimumDownloader does.

Command lines follow OVMS ``src/pull_module/optimum_export.cpp``; ``convert_tokenizer`` adds the tokenizer IR
when the export left it out.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shlex
import os
import shutil
import signal
import subprocess
import time
from typing import Callable

from ovms.pull.errors import ConversionError, InterruptedPull

log = logging.getLogger("ovms.pull")

INSTALL_HINT = ('Install optimum-intel into the Python environment that runs ovms: '
                'pip install "optimum-intel[openvino]" openvino-tokenizers; or pull an already converted model '
                'from the OpenVINO organization (e.g. OpenVINO/<name>-int4-ov) without --weight-format.')


# The optimum task of a local directory, where optimum-cli cannot infer it ("Cannot infer the task from a local
# directory yet"); embeddings and rerank always name theirs (export_command).
LOCAL_TASK = {"text_generation": "text-generation-with-past", "image_generation": "text-to-image",
              "speech2text": "automatic-speech-recognition-with-past", "text2speech": "text-to-audio"}
NPU_QUANTIZATION = "--sym --ratio 1.0 --group-size -1"  # OVMS and the Model Download microservice, for NPU (int4)
STOP_POLL_SECONDS = 0.2


def export_command(source_model: str, target: pathlib.Path, task: str, weight_format: str,
                   extra_quantization_params: str | None, *, optimum_task: str | None = None,
                   vocoder: str | None = None, model_type: str = "speecht5") -> list[str]:
    """``optimum_task`` adds ``--task`` where OVMS gives none (a local source directory needs it). text2speech:
    OVMS's getExportCmdTextToSpeech (Kokoro names its task; SpeechT5 takes the vocoder as a model kwarg)."""
    cmd = ["optimum-cli", "export", "openvino"]
    if task == "text2speech":
        if model_type == "kokoro":
            cmd += ["--task", "text-to-audio"]
            optimum_task = None
        elif vocoder:
            cmd += ["--model-kwargs", json.dumps({"vocoder": vocoder})]
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
    elif optimum_task:
        cmd += ["--task", optimum_task]
    if extra_quantization_params:
        cmd += shlex.split(extra_quantization_params)
    cmd.append(str(target))
    return cmd


def optimum_available(path: str | None = None) -> bool:
    return shutil.which("optimum-cli", path=path) is not None


def _run(cmd: list[str], env: dict | None, stop_requested: Callable[[], str | None] | None) -> int:
    """The command's exit code. With ``stop_requested``, polled while it runs: when it returns a reason the
    command's whole process group is killed (SIGKILL) and InterruptedPull raised."""
    if stop_requested is None:
        return subprocess.run(cmd, env=env, check=False).returncode
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        while True:
            try:
                return proc.wait(STOP_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            reason = stop_requested()
            if reason:
                raise InterruptedPull(f"{cmd[0]} stopped ({reason}).")
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        else:  # children it left behind in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


run_tool = _run  # the download service runs its other exporters (ultralytics' yolo) the same way


def convert(source_model: str, target: pathlib.Path, task: str, weight_format: str,
            extra_quantization_params: str | None, *, env: dict | None = None, optimum_task: str | None = None,
            stop_requested: Callable[[], str | None] | None = None, vocoder: str | None = None,
            model_type: str = "speecht5") -> None:
    """Run the export (and convert_tokenizer if needed) into ``target``; ConversionError on any failure,
    InterruptedPull when ``stop_requested`` says so (the tools are killed)."""
    if shutil.which("optimum-cli", path=(env or {}).get("PATH")) is None:
        raise ConversionError(
            f"optimum-cli is not installed: converting {source_model} to OpenVINO IR (--weight-format "
            f"{weight_format}) needs optimum-intel.", remedy=INSTALL_HINT)
    cmd = export_command(source_model, target, task, weight_format, extra_quantization_params,
                         optimum_task=optimum_task, vocoder=vocoder, model_type=model_type)
    log.info("Converting %s: %s", source_model, shlex.join(cmd))
    returncode = _run(cmd, env, stop_requested)
    if returncode != 0:
        raise ConversionError(f"optimum-cli failed (exit {returncode}) converting {source_model}.",
                              remedy="Read its output above; check --weight-format/--extra_quantization_params "
                                     "and that the model is supported by optimum-intel, then re-run.")
    if task in ("text_generation", "embeddings", "rerank", "speech2text", "text2speech") \
            and not (target / "openvino_tokenizer.xml").exists():
        if shutil.which("convert_tokenizer", path=(env or {}).get("PATH")) is None:
            raise ConversionError("convert_tokenizer is not installed and the export has no tokenizer IR.",
                                  remedy="pip install openvino-tokenizers, then re-run with --overwrite_models.")
        tok = ["convert_tokenizer", source_model, "--with-detokenizer", "-o", str(target)]
        log.info("Adding the tokenizer IR: %s", shlex.join(tok))
        if _run(tok, env, stop_requested) != 0:
            raise ConversionError(f"convert_tokenizer failed for {source_model}.",
                                  remedy="Read its output above, then re-run with --overwrite_models.")
