"""Check a pipeline definition against the models it uses, and work out what running it takes.

The checks and their messages are OVMS's (src/dags/pipelinedefinition.cpp, src/status.cpp), each with the node
and field named. The result, a ``Plan``, gives the nodes in an order that runs every node after its sources,
the demultiplexing levels each node runs at, and the pipeline's inputs and outputs as its metadata shows them.

Demultiplexing levels: a node with ``demultiply_count`` splits its outputs along their first dimension, and the
nodes after it run once per slice (a "branch"). ``gather_from_node`` stacks the branches of that demultiplexer
again before a node runs; branches never gathered are stacked at the response, outermost first, each adding a
leading dimension. Levels open and close in LIFO order.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ovms.errors import ModelLoadError
from ovms.pipelines.definition import CUSTOM, REQUEST, NodeDefinition, PipelineDefinition
from ovms.types import TensorSpec


def _shape(shape) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def _fits(want: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(want) == len(got) and all(w == -1 or g == -1 or w == g for w, g in zip(want, got))


@dataclasses.dataclass(slots=True)
class NodePlan:
    node: NodeDefinition
    inputs: dict[str, TensorSpec]  # the model's or custom node's inputs by name
    outputs: dict[str, TensorSpec]  # by data_item
    levels: tuple[str, ...] = ()  # demultiplexers whose branches this node runs in (outermost first)
    depends_on: tuple[str, ...] = ()


@dataclasses.dataclass(slots=True)
class Plan:
    order: list[NodePlan]
    request_levels: tuple[str, ...]  # ("request",) when the pipeline splits the request
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_levels: dict[str, tuple[str, ...]]  # pipeline output -> the levels gathered at the response
    counts: dict[str, int | None]  # demultiplexer -> its static demultiply_count (None: dynamic)


class _Refused(ModelLoadError):
    pass


def _refuse(pipeline: str, message: str, details: str) -> _Refused:
    return _Refused(f"{message} - pipeline {pipeline}: {details}")


def make_plan(definition: PipelineDefinition,
              node_specs: Callable[[NodeDefinition], tuple[dict[str, TensorSpec], dict[str, TensorSpec]]],
              ) -> Plan:
    """Check ``definition``; ``node_specs(node)`` gives a node's (inputs, outputs) specs or raises ModelLoadError.

    Raise ModelLoadError with OVMS's message and the node and field at fault.
    """
    name = definition.name
    nodes: dict[str, NodeDefinition] = {}
    for node in definition.nodes:
        if node.name == REQUEST:
            raise _refuse(name, "Pipeline definition has multiple request nodes",
                          f"a node is named {REQUEST!r}, which is the pipeline's inputs; rename it")
        if node.name in nodes:
            raise _refuse(name, "Pipeline definition has multiple nodes with the same name", f"node {node.name}")
        nodes[node.name] = node

    # References between nodes.
    def check_source(source, where: str) -> None:
        if source.node == "response":
            raise _refuse(name, "Pipeline definition has response node used as dependency node", where)
        if source.node == REQUEST:
            if source.data_item not in definition.inputs:
                raise _refuse(name, "Pipeline definition has reference to missing data source",
                              f"{where} takes {source.data_item!r} from the request, which is not in the pipeline's "
                              f"inputs {list(definition.inputs)}")
            return
        producer = nodes.get(source.node)
        if producer is None:
            raise _refuse(name, "Pipeline definition has reference to missing node",
                          f"{where} takes its data from node {source.node!r}, which the pipeline does not have")
        if producer.data_item_of(source.data_item) is None:
            raise _refuse(name, "Pipeline definition has reference to missing data source",
                          f"{where} takes {source.data_item!r} from node {source.node}, whose outputs (aliases) are "
                          f"{[alias for _, alias in producer.outputs]}")

    for node in nodes.values():
        if not node.inputs:
            raise _refuse(name, "Pipeline definition has unconnected nodes",
                          f"node {node.name} has no inputs; connect it to the request or to another node")
        seen = set()
        for input_name, source in node.inputs:
            if input_name in seen:
                raise _refuse(name, "Pipeline definition has multiple connections to the same input of underlying "
                                    "model", f"node {node.name} input {input_name}")
            seen.add(input_name)
            check_source(source, f"node {node.name} input {input_name}")
        if node.gather_from_node is not None:
            if node.gather_from_node == REQUEST:
                if definition.demultiply_count is None:
                    raise _refuse(name, "Gathering from entry node is not allowed",
                                  f"node {node.name} gathers from the request, which the pipeline does not split "
                                  "(no pipeline-level demultiply_count)")
            elif node.gather_from_node not in nodes:
                raise _refuse(name, "Gather node refers to not existing node",
                              f"node {node.name} gather_from_node {node.gather_from_node!r}")
            elif nodes[node.gather_from_node].demultiply_count is None:
                raise _refuse(name, "Gather node refers to node that isn't demultiplexer",
                              f"node {node.name} gathers from {node.gather_from_node}, which has no "
                              "demultiply_count")
    if not definition.outputs:
        raise _refuse(name, "Pipeline definition is missing request or response node", "outputs is empty")
    for output_name, source in definition.outputs:
        check_source(source, f"output {output_name}")
    dynamic = [n.name for n in nodes.values() if n.demultiply_count == -1]
    if definition.demultiply_count == -1:
        dynamic.append(REQUEST)
    if len(dynamic) > 1:
        raise _refuse(name, "Pipeline definition has more than one dynamic demultiplexer",
                      f"nodes {dynamic} have demultiply_count -1; only one dynamic demultiplexer may exist")

    # Order: every node after the nodes it takes data from; a cycle leaves nodes unordered.
    depends = {n.name: tuple(dict.fromkeys(s.node for _, s in n.inputs if s.node != REQUEST)) for n in nodes.values()}
    ordered: list[str] = []
    done: set[str] = set()
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(d in done for d in depends[n])]
        if not ready:
            raise _refuse(name, "Pipeline definition contains a cycle", f"nodes {sorted(pending)} depend on each "
                                                                        "other")
        for n in ready:
            ordered.append(n)
            done.add(n)
        pending = [n for n in pending if n not in done]
    used = {s.node for _, s in definition.outputs}
    for n in reversed(ordered):
        if n in used:
            used.update(depends[n])
    unused = [n for n in ordered if n not in used]
    if unused:
        raise _refuse(name, "Pipeline definition has unconnected nodes",
                      f"the outputs of {unused} reach no pipeline output; connect them or remove them")

    # What the models or custom nodes take and give.
    plans: dict[str, NodePlan] = {}
    for n in ordered:
        node = nodes[n]
        inputs, outputs = node_specs(node)
        missing = [item for item, _ in node.outputs if item not in outputs]
        if missing:
            raise _refuse(name, "Pipeline definition has reference to missing model output",
                          f"node {n} ({_what(node)}) has no output {missing[0]!r}; its outputs are {sorted(outputs)}")
        for input_name, _ in node.inputs:
            if input_name not in inputs:
                raise _refuse(name, "Pipeline definition has connection to non existing model input",
                              f"node {n} ({_what(node)}) has no input {input_name!r}; its inputs are "
                              f"{sorted(inputs)}")
        unconnected = [i for i in inputs if i not in dict(node.inputs)]
        if unconnected:
            raise _refuse(name, "Pipeline definition does not have connections for all inputs of underlying models",
                          f"node {n} ({_what(node)}) input {unconnected[0]} is not connected")
        plans[n] = NodePlan(node, inputs, outputs, depends_on=depends[n])

    # Demultiplexing levels, and the shape each connection carries.
    request_levels = (REQUEST,) if definition.demultiply_count is not None else ()
    counts: dict[str, int | None] = {}
    if definition.demultiply_count is not None:
        counts[REQUEST] = None if definition.demultiply_count == -1 else definition.demultiply_count
    for n in ordered:
        node = nodes[n]
        if node.demultiply_count is not None:
            counts[n] = None if node.demultiply_count == -1 else node.demultiply_count
    out_levels: dict[str, tuple[str, ...]] = {}

    def levels_of(source) -> tuple[str, ...]:
        return request_levels if source.node == REQUEST else out_levels[source.node]

    request_specs: dict[str, list[tuple[str, TensorSpec]]] = {}

    def carried(source) -> TensorSpec | None:
        """The spec a source gives one branch; None for a request input (its spec comes from its consumers)."""
        if source.node == REQUEST:
            return None
        plan = plans[source.node]
        spec = plan.outputs[plan.node.data_item_of(source.data_item)]
        shape = spec.shape
        if plan.node.demultiply_count is not None:
            shape = shape[1:]
        return TensorSpec(spec.name, spec.datatype, shape)

    for n in ordered:
        plan = plans[n]
        node = plan.node
        source_levels = {levels_of(s) for _, s in node.inputs}
        if len(source_levels) > 1:
            raise _refuse(name, "Demultiplexer and gather nodes are not in LIFO order",
                          f"node {n} takes inputs from different demultiplexing levels "
                          f"{sorted(map(list, source_levels))}; gather them first (gather_from_node)")
        levels = source_levels.pop() if source_levels else ()
        if node.gather_from_node is not None:
            if not levels or levels[-1] != node.gather_from_node:
                raise _refuse(name, "Demultiplexer and gather nodes are not in LIFO order",
                              f"node {n} gathers from {node.gather_from_node}, but its inputs run in the branches "
                              f"of {list(levels) or 'no demultiplexer'}; the innermost open demultiplexer is the "
                              "only one it can gather")
            levels = levels[:-1]
        plan.levels = levels
        for input_name, source in node.inputs:
            want = plan.inputs[input_name]
            got = carried(source)
            if node.gather_from_node is not None and got is not None:
                count = counts.get(node.gather_from_node)
                got = TensorSpec(got.name, got.datatype, (-1 if count is None else count,) + got.shape)
            if got is None:
                if node.gather_from_node is not None:
                    want = TensorSpec(want.name, want.datatype, want.shape[1:])
                request_specs.setdefault(source.data_item, []).append((f"node {n} input {input_name}", want))
                continue
            if got.datatype != want.datatype:
                raise _refuse(name, "Invalid input precision",
                              f"precision mismatch between dependency node: {source.node} output: {source.data_item} "
                              f"with precision: {got.datatype} and current node: {n} input: {input_name} with "
                              f"precision: {want.datatype}")
            if not _fits(want.shape, got.shape):
                raise _refuse(name, "Invalid input shape",
                              f"shape mismatch between dependency node: {source.node} output: {source.data_item} "
                              f"with shape: {_shape(got.shape)} and current node: {n} input: {input_name} with "
                              f"shape: {_shape(want.shape)}")
        if node.demultiply_count is not None:
            for item, _ in node.outputs:
                spec = plan.outputs[item]
                if len(spec.shape) < 2:
                    raise _refuse(name, "Pipeline has not enough shape dimensions to demultiply",
                                  f"node {n} output {item} has shape {_shape(spec.shape)}; a demultiplexer's outputs "
                                  "need at least 2 dimensions")
                if node.demultiply_count != -1 and spec.shape[0] not in (-1, node.demultiply_count):
                    raise _refuse(name, "Demultiplication count does not match tensor first dimension",
                                  f"node {n} demultiply_count {node.demultiply_count}, output {item} has shape "
                                  f"{_shape(spec.shape)}")
                if spec.datatype == "BYTES":
                    raise _refuse(name, "Demultiplication is not supported for string precision",
                                  f"node {n} output {item}")
            out_levels[n] = levels + (n,)
        else:
            out_levels[n] = levels

    # The pipeline's inputs: what the nodes taking them need (and a leading dimension when the request is split).
    inputs = []
    for input_name in definition.inputs:
        consumers = request_specs.get(input_name)
        if not consumers:
            raise _refuse(name, "Pipeline definition has unconnected nodes",
                          f"pipeline input {input_name} is not connected to any node")
        (where, spec), *others = consumers
        for other_where, other in others:
            if other.datatype != spec.datatype or not _fits(other.shape, spec.shape):
                raise _refuse(name, "Multiple nodes connected to the same pipeline input require different tensor "
                                    "metadata",
                              f"input {input_name}: {where} needs {spec.datatype} {_shape(spec.shape)}, {other_where} "
                              f"needs {other.datatype} {_shape(other.shape)}")
            shape = tuple(a if a != -1 else b for a, b in zip(spec.shape, other.shape))
            spec = TensorSpec(spec.name, spec.datatype, shape)
        shape = spec.shape
        if definition.demultiply_count is not None:
            count = definition.demultiply_count
            shape = (count,) + shape
        inputs.append(TensorSpec(input_name, spec.datatype, shape))

    outputs = []
    output_levels = {}
    by_input = {spec.name: spec for spec in inputs}
    for output_name, source in definition.outputs:
        levels = levels_of(source)
        if source.node == REQUEST:
            spec = by_input[source.data_item]
            shape = spec.shape[1:] if request_levels else spec.shape
        else:
            spec = carried(source)
            shape = spec.shape
        for level in reversed(levels):
            count = counts[level]
            shape = (-1 if count is None else count,) + shape
        outputs.append(TensorSpec(output_name, spec.datatype, shape))
        output_levels[output_name] = levels
    return Plan([plans[n] for n in ordered], request_levels, inputs, outputs, output_levels, counts)


def _what(node: NodeDefinition) -> str:
    if node.type == CUSTOM:
        return f"custom node {node.library.class_name} from {node.library.path.name}"
    return f"model {node.model_name}" + (f" version {node.version}" if node.version else "")
