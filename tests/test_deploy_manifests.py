"""docker/ and docker/kubernetes/: every manifest valid offline, and in agreement with the server it runs.

Kubernetes kinds are checked with kubernetes-validate's bundled schemas (strict: unknown fields fail, as
kubectl's default server-side field validation does) for the oldest and newest bundled releases we aim at.
KServe's ServingRuntime and InferenceService are checked against their CRD schemas vendored in
tests/fixtures/kserve_crds (SOURCE.md), made strict the same way. No cluster, no podman, no network:
docker/smoke.sh is the test that builds and runs the image.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import pathlib
import re
import tomllib
import urllib.request

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from ovms import cli  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
KUBERNETES = DOCKER / "kubernetes"
CRD_SCHEMAS = ROOT / "tests" / "fixtures" / "kserve_crds"
# grpc probes are GA from 1.27; 1.28 is the oldest release these manifests promise to apply on.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
KSERVE_KINDS = {("serving.kserve.io/v1alpha1", "ServingRuntime"), ("serving.kserve.io/v1beta1", "InferenceService")}
# Where KServe sends HTTP traffic and mounts the storageUri (kserve-openvino.yaml, the storage initializer).
KSERVE_HTTP_PORT = 8080
KSERVE_MODEL_DIR = "/mnt/models"


def _documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((f"{path.name}:{document['kind']}/{document['metadata']['name']}", document))
    return found


DOCUMENTS = _documents()


def _one(kind: str) -> dict:
    (document,) = [d for _, d in DOCUMENTS if d["kind"] == kind]
    return document


def _drain_timeout(args) -> float:
    """The server's drain timeout under these arguments (the flag, or its default)."""
    return float(getattr(args, "drain_timeout_seconds", None) or 30)


def _server_args(argv: list[str]):
    """argv parsed and checked as `ovms` does at start (an unknown flag or a bad combination fails here)."""
    args = cli.build_parser().parse_args(argv)
    cli.validate(args)
    return args


def _duration_seconds(text: str) -> float:
    """A compose duration ("1m30s", "40s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- schemas -----------------------------------------------------------------------------------------------

def test_every_manifest_is_a_known_kind():
    assert DOCUMENTS, "no manifests found"
    kinds = {d["kind"] for _, d in DOCUMENTS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServingRuntime", "InferenceService"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name,document", [(n, d) for n, d in DOCUMENTS
                                           if (d["apiVersion"], d["kind"]) not in KSERVE_KINDS],
                         ids=[n for n, d in DOCUMENTS if (d["apiVersion"], d["kind"]) not in KSERVE_KINDS])
def test_kubernetes_schema(name, document, version):
    kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_schema_catches_a_typo():
    """The validation has teeth: a misspelt probe field is an error that names it."""
    deployment = json.loads(json.dumps(_one("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError, match="'pth' was unexpected"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema):
    """The CRD schema with unknown fields refused wherever the API server would refuse them under
    fieldValidation=Strict: objects with properties and neither additionalProperties nor
    x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_validator(kind: str, version: str):
    schema = json.loads(gzip.decompress((CRD_SCHEMAS / f"{kind}.{version}.schema.json.gz").read_bytes()))
    return jsonschema.Draft7Validator(_strict(schema))


def _crd_errors(document: dict) -> list[str]:
    version = document["apiVersion"].rpartition("/")[2]
    validator = _crd_validator(document["kind"], version)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name,document", [(n, d) for n, d in DOCUMENTS
                                           if (d["apiVersion"], d["kind"]) in KSERVE_KINDS],
                         ids=[n for n, d in DOCUMENTS if (d["apiVersion"], d["kind"]) in KSERVE_KINDS])
def test_kserve_crd_schema(name, document):
    assert _crd_errors(document) == []
    # metadata is only `type: object` in a CRD schema; the API server checks it as ObjectMeta.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"])


def test_kserve_crd_schema_catches_mistakes():
    runtime = json.loads(json.dumps(_one("ServingRuntime")))
    runtime["spec"]["supportedModelFormats"][0]["autoselect"] = True
    runtime["spec"]["containers"][0]["args"] = "--port=9000"
    errors = _crd_errors(runtime)
    assert any("'autoselect' was unexpected" in e for e in errors), errors
    assert any(e.startswith("spec.containers.0.args:") and "is not of type 'array'" in e for e in errors), errors
    service = json.loads(json.dumps(_one("InferenceService")))
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop("storageUri")
    assert any("'storageURI' was unexpected" in e for e in _crd_errors(service))


# -- the Deployment, Service, autoscaler and the server they run ---------------------------------------------

def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _named_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    return _named_ports(container)[port] if isinstance(port, str) else port


def test_deployment_ports_match_the_server_arguments():
    container = _container(_one("Deployment"))
    args = _server_args(container["args"])
    assert _named_ports(container) == {"grpc": args.port, "http": args.rest_port} == {"grpc": 9000, "http": 8000}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _probe_port(container, container[probe]) == args.rest_port, probe


def test_deployment_reads_its_models_from_s3():
    container = _container(_one("Deployment"))
    args = _server_args(container["args"])
    assert args.config_path.startswith("s3://")
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "ovms-s3", "key": key}
    assert env["S3_ENDPOINT"]["value"].startswith("http")
    (secret,) = [d for _, d in DOCUMENTS if d["kind"] == "Secret" and d["metadata"]["name"] == "ovms-s3"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])


def test_deployment_probe_paths():
    container = _container(_one("Deployment"))
    paths = {probe: container[probe]["httpGet"]["path"]
             for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                     "readinessProbe": "/v2/health/ready"}


def test_probe_paths_answer_200_on_the_server(server):
    """Every HTTP path a manifest or the image probes is served by our REST server, 200 when ready."""
    container = _container(_one("Deployment"))
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths.add(_healthcheck_module().READY_PATH)
    for path in sorted(paths):
        with urllib.request.urlopen(f"http://{server.rest_url}{path}", timeout=10) as response:
            assert response.status == 200, path


def test_termination_grace_covers_prestop_and_drain():
    deployment = _one("Deployment")
    container = _container(deployment)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 2 <= pre_stop <= 15, "a few seconds, for endpoint removal to reach the proxies"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = _drain_timeout(_server_args(container["args"]))
    assert grace > pre_stop + drain, (grace, pre_stop, drain)


def test_deployment_resources_and_security():
    spec = _one("Deployment")["spec"]["template"]["spec"]
    container = _container(_one("Deployment"))
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsUser"] == _dockerfile_uid()


def test_service_selects_the_pods_and_names_their_ports():
    deployment, service = _one("Deployment"), _one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named = _named_ports(_container(deployment))
    assert {p["name"]: (p["port"], named[p["targetPort"]]) for p in service["spec"]["ports"]} == {
        "grpc": (9000, 9000), "http": (8000, 8000)}


def test_autoscaler_targets_the_deployment_on_cpu():
    deployment, hpa = _one("Deployment"), _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in _container(deployment)["resources"]["requests"], "utilization needs a CPU request"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_disruption_budget_selects_the_pods():
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- KServe ----------------------------------------------------------------------------------------------

def test_serving_runtime_arguments_are_kserves():
    spec = _one("ServingRuntime")["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    args = _server_args(container["args"])
    assert args.model_name == "{{.Name}}" and args.model_path == KSERVE_MODEL_DIR
    assert args.rest_port == KSERVE_HTTP_PORT and args.port == 9000
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.rest_port) and args.metrics_enable
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert {"openvino", "onnx"} <= set(formats) and all(formats[n]["autoSelect"] for n in ("openvino", "onnx"))
    assert container["securityContext"]["runAsUser"] == _dockerfile_uid()


def test_inference_service_uses_the_runtime_from_s3():
    runtime, service = _one("ServingRuntime"), _one("InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].startswith("s3://")
    account = _one("ServiceAccount")
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    secrets = {d["metadata"]["name"]: d for _, d in DOCUMENTS if d["kind"] == "Secret"}
    (reference,) = account["secrets"]
    assert "serving.kserve.io/s3-endpoint" in secrets[reference["name"]]["metadata"]["annotations"]


# -- the image and compose -------------------------------------------------------------------------------

def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _dockerfile_uid() -> int:
    (user,) = re.findall(r"^USER\s+(\d+)", _dockerfile(), re.M)
    return int(user)


def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dockerfile_shape():
    text = _dockerfile()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE\}", text, re.M)) == 2, "multi-stage, both on the BASE argument"
    assert re.search(r"^EXPOSE 9000 8000$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["ovms"\]$', text, re.M)
    assert _dockerfile_uid() != 0
    assert re.search(r'CMD \["python3", "/opt/ovms/healthcheck.py"\]', text)
    assert "COPY docker/healthcheck.py /opt/ovms/healthcheck.py" in text
    assert "built by CI" not in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ovms"] == "ovms.cli:main", "ENTRYPOINT runs the console script"


def test_healthcheck_reports_the_server_ready(server):
    module = _healthcheck_module()
    healthy, message = module.check(int(server.rest_url.rpartition(":")[2]))
    assert healthy and message.endswith("/v2/health/ready: 200"), message


def test_healthcheck_reports_a_closed_port_unhealthy():
    healthy, message = _healthcheck_module().check(1)
    assert not healthy and "/v2/health/ready" in message and "refused" in message.lower()


def test_compose_agrees_with_the_server():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["ovms"]
    args = _server_args(service["command"])
    published = {int(p.split(":")[-1]) for p in service["ports"]}
    assert published == {args.port, args.rest_port}
    assert service["healthcheck"]["test"] == ["CMD", "python3", "/opt/ovms/healthcheck.py"]
    assert _duration_seconds(service["stop_grace_period"]) > _drain_timeout(args)
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert any(v.endswith(":/models:ro") for v in service["volumes"])
    assert args.config_path.startswith("/models/")
