"""The real optimum-cli on the command lines `ovms --pull` builds, then the export served by `python -m ovms`.

Tiny transformers-format repositories (tests/pull/real_export_models.py, built with the fixtures venv) are
published on the Hub imitation; `python -m ovms --pull ... --weight-format ...` runs optimum-intel's own
optimum-cli from ``.venv-fixtures/bin`` (first on PATH), which downloads them through HF_ENDPOINT. The fake
optimum-cli in test_pull_cli.py checks the command lines' shape; these tests check that the real tool accepts
them and that what it writes is a model ovms serves. They fail, not skip, without the fixtures venv:
`make test` builds it (`make fixtures-venv`).
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, ovms_command, pull_env
from hub_imitation import HubImitation
from test_pull_and_serve import free_port, stop, wait_ready

FIXTURE_BIN = ROOT / ".venv-fixtures" / "bin"
BUILDER = ROOT / "tests" / "pull" / "real_export_models.py"
EXPORT_TIMEOUT = 300

pytestmark = pytest.mark.slow


class TaggedHub(HubImitation):
    """The Hub imitation plus the metadata the real Hub computes for a transformers repository: ``pipeline_tag``
    and ``library_name`` in model info, also at ``/api/models/{repo}`` (no revision), which
    ``huggingface_hub.model_info`` asks when no revision is given. optimum-cli's ``--task auto`` (OVMS gives no
    --task for text generation, src/pull_module/optimum_export.cpp) is inferred from ``pipeline_tag``; without it,
    a Qwen2 export fails with "Asked to export a qwen2 model for the task auto (auto-detected)"."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tags: dict[str, dict] = {}

    def _apps(self):
        hub, cdn = super()._apps()
        hub.router.add_get("/api/models/{org}/{name}", self._latest)
        return hub, cdn

    async def _latest(self, request):
        request.match_info["rev"] = "main"
        return await self._revision(request)

    async def _revision(self, request):
        response = await super()._revision(request)
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        if response.status != 200 or repo_id not in self.tags:
            return response
        from aiohttp import web
        return web.json_response({**json.loads(response.body), **self.tags[repo_id]})


@pytest.fixture(scope="module")
def fixture_python() -> str:
    python = FIXTURE_BIN / "python"
    optimum_cli = FIXTURE_BIN / "optimum-cli"
    if not (python.exists() and optimum_cli.exists()):
        pytest.fail(f"{FIXTURE_BIN} has no python/optimum-cli: run `make fixtures-venv` (make test builds it).",
                    pytrace=False)
    return str(python)


@pytest.fixture(scope="module")
def source_repos(tmp_path_factory, fixture_python):
    """{"llm": dir, "embedder": dir}: the tiny transformers-format repositories, built once per module."""
    root = tmp_path_factory.mktemp("hf-repos")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for kind in ("llm", "embedder"):
        proc = subprocess.run([fixture_python, str(BUILDER), kind, str(root / kind)], env=env, capture_output=True,
                              text=True, timeout=EXPORT_TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"llm": root / "llm", "embedder": root / "embedder",
            "embedder_reference": json.loads((root / "embedder-reference.json").read_text())}


@pytest.fixture
def hub():
    h = TaggedHub().start()
    yield h
    h.stop()


def publish(hub: TaggedHub, repo_id: str, source, *, pipeline_tag: str, library_name: str) -> None:
    hub.add_repo(repo_id, {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()})
    hub.tags[repo_id] = {"pipeline_tag": pipeline_tag, "library_name": library_name}


def export_env(hub: TaggedHub, tmp_path) -> dict[str, str]:
    # optimum-cli downloads through huggingface_hub: HF_ENDPOINT (set by pull_env) and a private cache.
    return pull_env(hub, PATH=f"{FIXTURE_BIN}:{os.environ['PATH']}", HF_HOME=str(tmp_path / "hf-home"))


def pull_and_check(hub, tmp_path, repo_id: str, *flags: str) -> tuple[list[str], object]:
    models = tmp_path / "models"
    args = ["--source_model", repo_id, "--model_repository_path", str(models), *flags]
    started = time.monotonic()
    proc = subprocess.run(ovms_command("--pull", *args), env=export_env(hub, tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=EXPORT_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    print(f"{repo_id}: pull with the real optimum-cli took {time.monotonic() - started:.1f} s")
    target = models.joinpath(*repo_id.split("/"))
    assert f"Converting {repo_id}: optimum-cli export openvino" in output
    assert f"Model: {repo_id} downloaded to: {target}" in proc.stdout
    assert f"Graph: graph.pbtxt created in: {target}" in proc.stdout
    assert "Traceback" not in output
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
                 "graph.pbtxt"):
        assert (target / name).is_file() and (target / name).stat().st_size > 0, (name, sorted(os.listdir(target)))
    # optimum-cli fetched the weights from the imitation (no other hub is reachable).
    assert [r for r in hub.file_requests("/model.safetensors") if r["path"].startswith(f"/{repo_id}/resolve/")]
    return args, target


def serve(args: list[str], hub, tmp_path, model_name: str):
    port = free_port()
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(ovms_command(*args, "--model_name", model_name, "--rest_port", str(port),
                                         "--rest_bind_address", "127.0.0.1"),
                            env=export_env(hub, tmp_path), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/{model_name}/ready", log_path)
    except BaseException:
        stop(proc)
        log.close()
        raise
    return proc, log, port


def test_real_export_text_generation_pulls_and_serves(hub, tmp_path, source_repos):
    """A Qwen2 causal LM converted with OVMS's default int8 weights: the IR is weight-compressed, the graph is an
    LLM graph, and the served model answers its trained dialogue through the chat completions API."""
    import openai

    from real_export_models import ANSWER, QUESTION
    repo_id = "someorg/tiny-qwen2"
    publish(hub, repo_id, source_repos["llm"], pipeline_tag="text-generation", library_name="transformers")
    args, target = pull_and_check(hub, tmp_path, repo_id, "--task", "text_generation", "--weight-format", "int8")
    assert 'calculator: "HttpLLMCalculator"' in (target / "graph.pbtxt").read_text()
    assert 'element_type="u8"' in (target / "openvino_model.xml").read_text() or 'element_type="i8"' in (
        target / "openvino_model.xml").read_text()
    assert "chat_template" in (target / "openvino_tokenizer.xml").read_text()
    proc, log, port = serve(["--source_model", repo_id, "--model_repository_path", str(tmp_path / "models"),
                             "--task", "text_generation", "--weight-format", "int8"], hub, tmp_path, "gen")
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                           timeout=60) as client:
            answer = client.chat.completions.create(model="gen", messages=[{"role": "user", "content": QUESTION}],
                                                    max_tokens=20, temperature=0)
    finally:
        stop(proc)
        log.close()
    assert answer.choices[0].message.content == ANSWER
    assert answer.usage.completion_tokens > 0
    text = (tmp_path / "server.log").read_text()
    assert "Path already exists on local filesystem. Not downloading" in text and "Traceback" not in text


def test_real_export_embeddings_pulls_and_serves(hub, tmp_path, source_repos):
    """A sentence-transformers BERT converted with fp16 weights (tokenizer added by convert_tokenizer, as OVMS
    disables it in the export): the IR has the one output TextEmbeddingPipeline accepts (the
    --library sentence_transformers export had two and did not load), served embeddings have the model's width,
    and with --pooling MEAN they match the sentence-transformers model (mean pooling, normalize)."""
    import openai

    from real_export_models import EMBEDDING_SIZE
    repo_id = "someorg/tiny-sentence-bert"
    publish(hub, repo_id, source_repos["embedder"], pipeline_tag="sentence-similarity",
            library_name="sentence-transformers")
    args, target = pull_and_check(hub, tmp_path, repo_id, "--task", "embeddings", "--weight-format", "fp16",
                                  "--pooling", "MEAN")
    assert (target / "openvino_model.xml").read_text().count('type="Result"') == 1
    graph = (target / "graph.pbtxt").read_text()
    assert 'calculator: "EmbeddingsCalculatorOV"' in graph and "pooling: MEAN" in graph
    reference = source_repos["embedder_reference"]
    proc, log, port = serve(["--source_model", repo_id, "--model_repository_path", str(tmp_path / "models"),
                             "--task", "embeddings", "--weight-format", "fp16", "--pooling", "MEAN"],
                            hub, tmp_path, "emb")
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0,
                           timeout=60) as client:
            result = client.embeddings.create(model="emb", input=reference["sentences"])
    finally:
        stop(proc)
        log.close()
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (len(reference["sentences"]), EMBEDDING_SIZE)
    expected = np.array(reference["vectors"])
    cosine = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.999, cosine
