"""The architecture of STYLE.md, enforced: layers import downward only."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ovms"


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(*parts: str):
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        yield str(relative), imported_modules(path)


def starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("rule, allowed, forbidden", [
    ("openvino only under backends/", ("backends/",), ("openvino", "openvino_genai")),
    ("grpc and aiohttp only in transports and the composition root",
     ("transport/", "server.py", "pull/", "_proto/", "download/"),  # download/: its own aiohttp service
     ("grpc", "aiohttp", "grpc_health", "grpc_reflection")),
    ("concrete backends only in the composition root", ("backends/", "server.py"), ("ovms.backends",)),
])
def test_import_rules(rule, allowed, forbidden):
    offenders = [(module, sorted(n for n in names if starts(n, forbidden)))
                 for module, names in modules_under() if not module.startswith(allowed)]
    offenders = [o for o in offenders if o[1]]
    assert not offenders, f"{rule}: {offenders}"


def test_pull_never_imports_the_serving_stack():
    serving = ("ovms.server", "ovms.transport", "ovms.registry", "ovms.dataplane", "ovms.protocol",
               "ovms.backends", "grpc", "aiohttp.web")
    offenders = [(m, sorted(n for n in names if starts(n, serving))) for m, names in modules_under()
                 if m.startswith("pull/")]
    assert not [o for o in offenders if o[1]]


def test_lower_layers_do_not_import_upper_ones():
    order = {"types.py": 0, "errors.py": 0, "config.py": 1, "servable.py": 1, "registry.py": 2,
             "dataplane.py": 3}
    upper = {0: ("ovms.servable", "ovms.registry", "ovms.dataplane", "ovms.protocol", "ovms.transport",
                 "ovms.server"),
             1: ("ovms.registry", "ovms.dataplane", "ovms.protocol", "ovms.transport", "ovms.server"),
             2: ("ovms.dataplane", "ovms.protocol", "ovms.transport", "ovms.server"),
             3: ("ovms.protocol", "ovms.transport", "ovms.server")}
    for module, names in modules_under():
        if module in order:
            bad = sorted(n for n in names if starts(n, upper[order[module]]))
            assert not bad, f"{module} imports {bad}"
