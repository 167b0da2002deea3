"""`python -m ovms --pull` end to end against the Hub imitation: happy path, faults, errors, re-runs."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from conftest import assert_pulled, content, tiny_llm_files
from hub_imitation import Faults

REPO = "OpenVINO/tiny-llm-ov"


def model_dir(pull, repo=REPO):
    return pull.models.joinpath(*repo.split("/"))


def test_pull_downloads_verifies_and_writes_graph(pull, hub, llm_repo, big_files):
    run = pull(REPO, "--task", "text_generation", "--tool_parser", "hermes3", HF_TOKEN="hf_test_token")
    assert run.code == 0, run.output
    d = model_dir(pull)
    assert_pulled(d, tiny_llm_files(big_files))
    assert f"Model: {REPO} downloaded to: {d}" in run.stdout
    assert f"Graph: graph.pbtxt created in: {d}" in run.stdout
    assert "LFS resume: attempts=5 interval=0.05 s" in run.output
    graph = (d / "graph.pbtxt").read_text()
    assert 'calculator: "HttpLLMCalculator"' in graph and 'tool_parser: "hermes3",' in graph
    record = json.loads((d / ".ovms_pull.json").read_text())
    assert record["commit"] == llm_repo.sha and set(record["files"]) == set(llm_repo.files)
    # The token goes to the hub only; the CDN got the large files over several ranges.
    assert all(r["auth"] == "Bearer hf_test_token" for r in hub.requests if r["origin"] == "hub")
    cdn = [r for r in hub.requests if r["origin"] == "cdn"]
    assert cdn and all(r["auth"] is None for r in cdn)
    assert len([r for r in cdn if r["range"]]) >= 8  # 8 MiB in 1 MiB ranges


def test_parser_names_ovms_does_not_have_are_refused_before_the_download(pull, hub):
    run = pull(REPO, "--task", "text_generation", "--tool_parser", "qwen3")
    assert run.code == 64, run.output
    assert ('Unsupported tool_parser: "qwen3". Supported tool parsers are: llama3, hermes3, phi4, mistral, gptoss, '
            'qwen3coder, devstral, lfm2, gemma4, onyx, minicpm5') in run.stderr
    run = pull(REPO, "--task", "text_generation", "--reasoning_parser", "deepseek_r1")
    assert run.code == 64 and 'Unsupported reasoning_parser: "deepseek_r1"' in run.stderr, run.output
    assert hub.requests == [] and "Traceback" not in run.output
    assert not model_dir(pull).exists()


def test_rerun_is_a_noop_and_leaves_user_edits(pull, hub, llm_repo):
    assert pull(REPO, "--task", "text_generation").code == 0
    d = model_dir(pull)
    (d / "generation_config.json").write_text("edited by the user")
    before = len(hub.requests)
    run = pull(REPO, "--task", "text_generation")
    assert run.code == 0, run.output
    assert "is already pulled" in run.output and "--overwrite_models" in run.output
    assert len(hub.requests) == before  # not even a metadata call
    assert (d / "generation_config.json").read_text() == "edited by the user"
    run = pull(REPO, "--task", "text_generation", "--overwrite_models")
    assert run.code == 0, run.output
    assert (d / "generation_config.json").read_bytes() == llm_repo.files["generation_config.json"].data


def test_task_is_inferred_and_failure_is_explained(pull, hub):
    hub.add_repo("OpenVINO/emb", {"config.json": b'{"architectures": ["BertModel"]}', "m.xml": b"<x/>"})
    run = pull("OpenVINO/emb", "--model_name", "myemb")
    assert run.code == 0, run.output
    assert 'name: "myemb",\n    calculator: "EmbeddingsCalculatorOV"' in (
        model_dir(pull, "OpenVINO/emb") / "graph.pbtxt").read_text()
    hub.add_repo("OpenVINO/odd", {"config.json": b'{"architectures": ["Mystery"]}'})
    run = pull("OpenVINO/odd")
    assert run.code == 64
    assert "Could not infer model task - specify --task value explicitly" in run.stderr
    assert "Traceback" not in run.output


@pytest.mark.parametrize("faults,expect_log", [
    (Faults(drop_after=300_000, times=3), "resuming from byte"),
    (Faults(fail_first=2), "HTTP 503"),
    (Faults(ignore_range=True, times=100), "ignored the Range request"),
    (Faults(stall_after=200_000, stall_seconds=4), "resuming from byte"),
    (Faults(flip_at=5_000_000, times=1), "failed verification"),
    (Faults(truncate_to=4_000_000, times=1), ("expected bytes", "HTTP 416")),
], ids=["drop", "5xx", "ignore-range", "stall", "flip-byte", "wrong-size"])
def test_faults_end_in_verified_files(pull, hub, llm_repo, big_files, faults, expect_log):
    hub.set_faults(REPO, "openvino_model.bin", faults)
    run = pull(REPO, "--task", "text_generation")
    assert run.code == 0, run.output
    assert_pulled(model_dir(pull), tiny_llm_files(big_files))
    expected = (expect_log,) if isinstance(expect_log, str) else expect_log
    assert any(e in run.output for e in expected), run.output
    assert faults.used >= 1 or "HTTP 416" in run.output


@pytest.mark.parametrize("faults,expect_log", [
    (Faults(ignore_range=True, gather=4, times=4), "ignored the Range request"),
    # the four ranges are the file's first four stripes: below the false size they get a range with the wrong
    # total, beyond it a 416; whichever end is handled first restarts the file and drops the others
    (Faults(truncate_to=2_500_000, gather=4, times=4), ("expected bytes", "HTTP 416")),
], ids=["ignore-range", "wrong-size"])
def test_parallel_ranges_failing_at_once(pull, hub, llm_repo, big_files, faults, expect_log):
    """Four ranges answered wrongly while the pull is stopped (SIGSTOP): it then finds all four ends in one batch
    from curl, and handling the first drops the other three (that was a KeyError and a traceback once)."""
    marker = pull.models / "OpenVINO" / "tiny-llm-ov.lfswip"
    faults.freeze_client = lambda: json.loads(marker.read_text())["pid"]
    hub.set_faults(REPO, "openvino_model.bin", faults)
    run = pull(REPO, "--task", "text_generation", OVMS_PULL_SEGMENT_BYTES=str(1 << 20), OVMS_PULL_CONNECTIONS="4")
    assert run.code == 0, run.output
    assert "Traceback" not in run.output
    expected = (expect_log,) if isinstance(expect_log, str) else expect_log
    assert any(e in run.output for e in expected), run.output
    assert faults.used == 4
    assert_pulled(model_dir(pull), tiny_llm_files(big_files))


def test_throttled_transfer_reports_progress(pull, hub, llm_repo, big_files, monkeypatch):
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=2_500_000, times=100))
    run = pull(REPO, "--task", "text_generation", OVMS_PULL_SEGMENT_BYTES=str(4 << 20),
               OVMS_PULL_PROGRESS_SECONDS="0.3")
    assert run.code == 0, run.output
    assert_pulled(model_dir(pull), tiny_llm_files(big_files))
    assert f"{REPO}: " in run.output and "MiB/s, ETA" in run.output  # periodic progress line (no TTY)


def test_persistent_failure_gives_up_with_remedy(pull, hub, llm_repo):
    hub.set_faults(REPO, "openvino_model.bin", Faults(fail_first=1000))
    run = pull(REPO, "--task", "text_generation", GIT_LFS_RESUME_ATTEMPTS="2")
    assert run.code == 1
    assert "Giving up on openvino_model.bin after 3 failed attempts: HTTP 503" in run.stderr
    assert "Re-run the same command to resume" in run.stderr
    assert "Traceback" not in run.output
    assert model_dir(pull).with_name("tiny-llm-ov.lfswip").exists()
    # The server recovers: the same command finishes.
    hub.faults.clear()
    assert pull(REPO, "--task", "text_generation").code == 0


def test_persistent_corruption_is_a_clear_error(pull, hub, llm_repo):
    hub.set_faults(REPO, "openvino_tokenizer.bin", Faults(flip_at=10, times=1000))
    run = pull(REPO, "--task", "text_generation", GIT_LFS_RESUME_ATTEMPTS="1")
    assert run.code == 1
    assert "openvino_tokenizer.bin failed verification 2 times (sha256" in run.stderr
    assert not (model_dir(pull) / "openvino_tokenizer.bin").exists()


def test_gated_repo_needs_token(pull, hub, big_files):
    hub.add_repo("meta/gated", {"config.json": b"{}", "w.bin": content("g", 2000)}, gated=True)
    run = pull("meta/gated", "--task", "text_generation")
    assert run.code == 1
    assert "Model meta/gated is gated" in run.stderr and "set HF_TOKEN" in run.stderr
    assert f"{hub.hub_url}/meta/gated" in run.stderr
    run = pull("meta/gated", "--task", "text_generation", HF_TOKEN="hf_test_token")
    assert run.code == 0, run.output


@pytest.mark.parametrize("flags,env,message,code", [
    (["--source_model", "nobody/nothing", "--task", "text_generation"], {},
     "Model nobody/nothing was not found on", 1),
    (["--source_model", REPO, "--task", "text_generation", "--revision", "v9"], {},
     "Revision 'v9' does not exist in model OpenVINO/tiny-llm-ov", 1),
    (["--source_model", REPO, "--task", "text_generation"], {"HF_ENDPOINT": "http://127.0.0.1:9"},
     "Could not reach http://127.0.0.1:9/api/models/OpenVINO/tiny-llm-ov/revision/main", 1),
    (["--source_model", REPO, "--task", "chat"], {}, "--task 'chat' is not supported", 64),
    (["--source_model", "not-a-repo", "--task", "text_generation"], {}, "is not a Hugging Face repository id", 64),
    (["--task", "text_generation"], {}, "Pull mode requires --source_model", 64),
    (["--source_model", REPO, "--gguf_filename", "x.bin"], {}, "does not end with .gguf", 64),
], ids=["not-found", "bad-revision", "network-down", "bad-task", "bad-repo-id", "no-source", "bad-gguf"])
def test_errors_say_what_to_do(hub, llm_repo, tmp_path, flags, env, message, code):
    from conftest import pull_env, run_ovms
    run = run_ovms(["--pull", "--model_repository_path", str(tmp_path), *flags],
                   pull_env(hub, GIT_LFS_RESUME_ATTEMPTS="1", **env))
    assert run.code == code, run.output
    assert message in run.stderr
    assert "Traceback" not in run.output


def test_names_escaping_the_repository_are_refused(pull, hub, tmp_path):
    hub.add_repo("evil/repo", {"config.json": b"{}", "../../escaped.txt": b"pwned"})
    run = pull("evil/repo", "--task", "text_generation")
    assert run.code == 1
    assert "would be written outside" in run.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_disk_full_is_refused_before_download(hub, llm_repo, tmp_path, monkeypatch, capsys):
    import argparse
    import shutil
    from ovms.pull import cli

    monkeypatch.setenv("HF_ENDPOINT", hub.hub_url)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name")
    parser.add_argument("--target_device")
    cli.add_arguments(parser)
    args = parser.parse_args(["--pull", "--source_model", REPO, "--model_repository_path", str(tmp_path),
                              "--task", "text_generation"])
    code, directory = cli.run(args, serve_after=False)
    err = capsys.readouterr().err
    assert (code, directory) == (1, None)
    assert "Not enough free disk space" in err and "choose another --model_repository_path" in err
    assert not hub.file_requests("openvino_model.bin")


def test_gguf_multi_part(pull, hub):
    parts = {f"q-00{i}-of-003.gguf": content(f"gg{i}", 300_000) for i in (1, 2, 3)}
    parts = {f"m-Q4-{i:05d}-of-00003.gguf": content(f"gg{i}", 300_000 + i) for i in (1, 2, 3)}
    hub.add_repo("unsloth/m-GGUF", {**parts, "m-Q8.gguf": content("q8", 5000), "README.md": b"hi"})
    run = pull("unsloth/m-GGUF", "--gguf_filename", "m-Q4-00001-of-00003.gguf")
    assert run.code == 0, run.output
    d = model_dir(pull, "unsloth/m-GGUF")
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == sorted([*parts, "graph.pbtxt"])
    assert_pulled(d, parts)
    assert 'models_path: "./m-Q4-00001-of-00003.gguf",' in (d / "graph.pbtxt").read_text()
    # Another quantization of the same repository lands beside it.
    run = pull("unsloth/m-GGUF", "--gguf_filename", "m-Q8.gguf")
    assert run.code == 0, run.output
    assert (d / "m-Q8.gguf").read_bytes() == content("q8", 5000)
    run = pull("unsloth/m-GGUF", "--gguf_filename", "m-Q5.gguf")
    assert run.code == 1 and "m-Q5.gguf is not in unsloth/m-GGUF" in run.stderr


def test_conversion_without_optimum_is_a_clear_error(pull, hub):
    hub.add_repo("someorg/pytorch-model", {"config.json": b'{"architectures": ["LlamaForCausalLM"]}'})
    run = pull("someorg/pytorch-model", "--task", "text_generation", "--weight-format", "int4")
    assert run.code == 1
    assert "optimum-cli is not installed" in run.stderr and 'pip install "optimum-intel[openvino]"' in run.stderr


def test_model_repository_edits(pull, hub, llm_repo, tmp_path):
    from conftest import pull_env, run_ovms
    assert pull(REPO, "--task", "text_generation").code == 0
    env = pull_env(hub)
    run = run_ovms(["--list_models", "--model_repository_path", str(pull.models)], env)
    assert run.code == 0 and run.stdout.splitlines() == [
        f"Available servables to serve from path: {pull.models} are: ", REPO], run.output
    cfg = tmp_path / "config.json"
    run = run_ovms(["--add_to_config", "--config_path", str(cfg), "--model_name", REPO,
                    "--model_repository_path", str(pull.models)], env)
    assert run.code == 0, run.output
    assert json.loads(cfg.read_text())["model_config_list"] == [
        {"config": {"name": REPO, "base_path": str(pull.models / REPO)}}]
    run = run_ovms(["--remove_from_config", "--config_path", str(cfg), "--model_name", REPO], env)
    assert run.code == 0 and json.loads(cfg.read_text())["model_config_list"] == []
    run = run_ovms(["--remove_from_config", "--config_path", str(cfg), "--model_name", REPO], env)
    assert run.code == 1 and f"doesn't have model with name: {REPO}" in run.stderr


def test_record_lists_verified_digests(pull, hub, llm_repo):
    assert pull(REPO, "--task", "text_generation").code == 0
    record = json.loads((model_dir(pull) / ".ovms_pull.json").read_text())
    entry = record["files"]["config.json"]
    data = llm_repo.files["config.json"].data
    assert entry["git-blob-sha1"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert record["files"]["openvino_model.bin"]["sha256"] == llm_repo.files["openvino_model.bin"].sha256


def test_second_pull_of_the_same_model_is_refused_while_one_runs(pull, hub, llm_repo, tmp_path):
    import fcntl
    import os
    marker = model_dir(pull).with_name("tiny-llm-ov.lfswip")
    marker.parent.mkdir(parents=True)
    fd = os.open(marker, os.O_RDWR | os.O_CREAT)
    os.write(fd, b'{"pid": 4242}')
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running pull holds it
    (model_dir(pull) / "precious.txt").parent.mkdir(parents=True)
    (model_dir(pull) / "precious.txt").write_text("being written by the other pull")
    try:
        run = pull(REPO, "--task", "text_generation")
        overwrite = pull(REPO, "--task", "text_generation", "--overwrite_models")
    finally:
        os.close(fd)
    assert run.code == 1
    assert "Another pull (pid 4242) is downloading OpenVINO/tiny-llm-ov into this directory now." in run.stderr
    assert overwrite.code == 1 and "Another pull (pid 4242)" in overwrite.stderr
    assert (model_dir(pull) / "precious.txt").exists()  # --overwrite_models did not delete under its feet
    assert pull(REPO, "--task", "text_generation").code == 0  # the lock is gone: the marker is taken over


def test_progress_bar_on_a_terminal(hub, llm_repo, tmp_path):
    """stderr on a terminal (here a pseudo-terminal without a size, as `docker run -t` gives): a tqdm bar."""
    import os
    import pty
    import select
    import subprocess

    from conftest import ROOT, ovms_command, pull_env
    master, slave = pty.openpty()
    proc = subprocess.Popen(ovms_command("--pull", "--source_model", REPO, "--model_repository_path",
                                         str(tmp_path), "--task", "text_generation"),
                            env=pull_env(hub), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    assert proc.wait(30) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert f"{REPO}: 100%" in screen and "11.0M/11.0M" in screen  # tqdm: label, percent, bytes


def test_disk_full_while_allocating(hub, llm_repo, tmp_path, monkeypatch, capsys):
    import argparse
    import errno
    import os
    from ovms.pull import cli

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("HF_ENDPOINT", hub.hub_url)
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--pull", "--source_model", REPO, "--model_repository_path", str(tmp_path),
                              "--task", "text_generation"])
    assert cli.run(args, serve_after=False) == (1, None)
    err = capsys.readouterr().err
    assert "is full" in err and "re-run the same command to resume" in err


# The fakes parse their command lines as the real tools do, so a flag the tool would reject fails the pull
# (argparse exits 2). optimum-cli: the options of `optimum-cli export openvino` that OVMS's command lines use, as
# declared by optimum-intel's parse_args_openvino (huggingface/optimum-intel, optimum/commands/export/openvino.py
# @37e85043; the Makefile's fixture venv pins optimum-intel 2.2.0). convert_tokenizer: openvino_tokenizers' own
# parser. Both write what they were asked to where they were asked to, like the real tools.
FAKE_OPTIMUM_CLI = r"""
import argparse, json, pathlib, sys
with open(CALLS, "a") as f:
    f.write(json.dumps(["optimum-cli", *sys.argv[1:]]) + "\n")
parser = argparse.ArgumentParser(prog="optimum-cli")
sub = parser.add_subparsers(dest="command", required=True).add_parser("export")
export = sub.add_subparsers(dest="exporter", required=True).add_parser("openvino")
export.add_argument("-m", "--model", type=str, required=True)
export.add_argument("output", type=pathlib.Path)
export.add_argument("--task", default="auto")
export.add_argument("--framework", type=str, choices=["pt", "tf"], default=None)
export.add_argument("--trust-remote-code", action="store_true")
export.add_argument("--weight-format", type=str, choices=["fp32", "fp16", "int8", "int4", "mxfp4", "nf4"])
export.add_argument("--quant-mode", type=str, default=None)
export.add_argument("--library", type=str, default=None,
                    choices=["transformers", "diffusers", "timm", "sentence_transformers", "open_clip"])
export.add_argument("--ratio", type=float, default=None)
export.add_argument("--sym", action="store_true", default=None)
export.add_argument("--group-size", type=int, default=None)
export.add_argument("--backup-precision", type=str, choices=["none", "int8_sym", "int8_asym"], default=None)
export.add_argument("--dataset", type=str, default=None)
export.add_argument("--all-layers", action="store_true", default=None)
export.add_argument("--awq", action="store_true", default=None)
export.add_argument("--disable-stateful", action="store_true")
export.add_argument("--disable-convert-tokenizer", action="store_true")
args = parser.parse_args()
args.output.mkdir(parents=True, exist_ok=True)
(args.output / "openvino_model.xml").write_text("<xml/>")
parsed = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
(args.output / "optimum_args.json").write_text(json.dumps(parsed))
"""

FAKE_CONVERT_TOKENIZER = r"""
import json, sys
from openvino_tokenizers.cli_tools.convert_tokenizer import get_parser
with open(CALLS, "a") as f:
    f.write(json.dumps(["convert_tokenizer", *sys.argv[1:]]) + "\n")
args = get_parser().parse_args()
args.output.mkdir(parents=True, exist_ok=True)
(args.output / "openvino_tokenizer.xml").write_text("<net name='tokenizer'/>")
if args.with_detokenizer:
    (args.output / "openvino_detokenizer.xml").write_text("<net name='detokenizer'/>")
"""


def fake_tools(bin_dir, calls) -> None:
    import stat
    import sys
    bin_dir.mkdir()
    for tool, body in (("optimum-cli", FAKE_OPTIMUM_CLI), ("convert_tokenizer", FAKE_CONVERT_TOKENIZER)):
        script = bin_dir / tool
        script.write_text(f"#!{sys.executable}\nCALLS = {str(calls)!r}\n{body}")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)


# Expected command lines: OVMS src/pull_module/optimum_export.cpp (getTextGenCmd overloads per graph kind), but
# embeddings export with --library transformers (see ovms/pull/convert.py; test_real_export.py runs the real tool).
@pytest.mark.parametrize("task,config,flags,export_args,parsed,calls_tokenizer,calculator", [
    ("text_generation", {"architectures": ["LlamaForCausalLM"]},
     ["--weight-format", "int4", "--extra_quantization_params", "--sym --group-size -1"],
     ["--model", "{src}", "--trust-remote-code", "--weight-format", "int4", "--sym", "--group-size", "-1"],
     {"weight_format": "int4", "sym": True, "group_size": -1, "trust_remote_code": True, "task": "auto",
      "library": None, "disable_convert_tokenizer": False},
     True, "HttpLLMCalculator"),
    ("embeddings", {"architectures": ["BertModel"]}, ["--task", "embeddings", "--weight-format", "fp16"],
     ["--disable-convert-tokenizer", "--model", "{src}", "--trust-remote-code", "--weight-format", "fp16",
      "--task", "feature-extraction", "--library", "transformers"],
     {"weight_format": "fp16", "task": "feature-extraction", "library": "transformers",
      "trust_remote_code": True, "disable_convert_tokenizer": True},
     True, "EmbeddingsCalculatorOV"),
    ("rerank", {"architectures": ["BertForSequenceClassification"]}, ["--task", "rerank", "--weight-format", "int8"],
     ["--disable-convert-tokenizer", "--model", "{src}", "--trust-remote-code", "--weight-format", "int8",
      "--task", "text-classification"],
     {"weight_format": "int8", "task": "text-classification", "library": None, "trust_remote_code": True,
      "disable_convert_tokenizer": True},
     True, "RerankCalculatorOV"),
    ("image_generation", {"_class_name": "StableDiffusionPipeline"},
     ["--task", "image_generation", "--weight-format", "int8"],
     ["--model", "{src}", "--weight-format", "int8"],
     {"weight_format": "int8", "task": "auto", "trust_remote_code": False, "disable_convert_tokenizer": False},
     False, "ImageGenCalculator"),
], ids=["text_generation", "embeddings", "rerank", "image_generation"])
def test_conversion_runs_optimum_cli_like_ovms(pull, hub, tmp_path, task, config, flags, export_args, parsed,
                                               calls_tokenizer, calculator):
    """Fake optimum-cli / convert_tokenizer on PATH parse and record their command lines; the graph follows."""
    import os
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    fake_tools(bin_dir, calls)
    src = f"someorg/pytorch-{task}"
    config_name = "model_index.json" if task == "image_generation" else "config.json"
    hub.add_repo(src, {config_name: json.dumps(config).encode()})
    run = pull(src, *flags, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert run.code == 0, run.output
    target = model_dir(pull, src)
    expected = [["optimum-cli", "export", "openvino", *(a.format(src=src) for a in export_args), str(target)]]
    if calls_tokenizer:
        expected.append(["convert_tokenizer", src, "--with-detokenizer", "-o", str(target)])
    assert [json.loads(line) for line in calls.read_text().splitlines()] == expected
    got = json.loads((target / "optimum_args.json").read_text())
    assert got["model"] == src and got["output"] == str(target)
    assert {k: got[k] for k in parsed} == parsed
    # The tokenizer IR landed in the model directory, where the served graph looks for it.
    assert ((target / "openvino_tokenizer.xml").is_file(), (target / "openvino_detokenizer.xml").is_file()) == (
        (calls_tokenizer, calls_tokenizer))
    assert f'calculator: "{calculator}"' in (target / "graph.pbtxt").read_text()
    assert f"Model: {src} downloaded to: {target}" in run.stdout


def test_fake_optimum_cli_rejects_what_optimum_rejects(tmp_path):
    """The fake is strict: a flag or value optimum-cli's parser refuses exits 2, so a wrong command line fails."""
    import subprocess
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    fake_tools(bin_dir, calls)
    for bad in (["--model", "m", "--weight-format", "int3", str(tmp_path / "o")],
                ["--model", "m", "--library", "sentence-transformers", str(tmp_path / "o")],
                ["--model", "m", "--no-such-flag", str(tmp_path / "o")]):
        proc = subprocess.run([bin_dir / "optimum-cli", "export", "openvino", *bad], capture_output=True, text=True)
        assert proc.returncode == 2 and "error:" in proc.stderr, (bad, proc.stderr)
    proc = subprocess.run([bin_dir / "convert_tokenizer", "--with-detokenizer", "-o", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "error:" in proc.stderr


def test_many_files_with_few_file_descriptors(hub, tmp_path):
    """A repository of 400 files under a 128-descriptor limit: parts are opened only while downloading."""
    import resource
    import subprocess

    from conftest import ROOT, ovms_command, pull_env
    files = {f"shard/{i:03d}.json": content(f"s{i}", 100 + i) for i in range(400)}
    files["config.json"] = b'{"architectures": ["BertModel"]}'
    hub.add_repo("OpenVINO/many-files", files)

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    proc = subprocess.run(ovms_command("--pull", "--source_model", "OpenVINO/many-files", "--model_repository_path",
                                       str(tmp_path)), env=pull_env(hub), cwd=ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=low_limit)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_pulled(tmp_path / "OpenVINO" / "many-files", files)


def test_pure_python_range_writer_end_to_end(pull, hub, llm_repo, big_files):
    """OVMS_NO_EXTENSIONS=1: the same pull through the pure-Python twin, with a dropped connection; then the
    twin this run expects (the compiled one, unless the whole run is pure)."""
    from tests.twins import expected_module
    hub.set_faults(REPO, "openvino_model.bin", Faults(drop_after=500_000, times=2))
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", OVMS_NO_EXTENSIONS="1")
    assert run.code == 0, run.output
    assert "Range writer: ovms._native.rangewrite_py" in run.output
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", "--overwrite_models")
    assert run.code == 0, run.output
    assert f"Range writer: {expected_module('rangewrite')}\n" in run.output
    assert_pulled(model_dir(pull), tiny_llm_files(big_files))
