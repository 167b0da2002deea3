"""A DAG pipeline as a servable: its nodes call the registry's models and Python custom nodes.

Each node runs as soon as the nodes it takes data from are done, so independent nodes run concurrently; the
branches of a demultiplexer run concurrently too. Tensors pass between nodes as numpy arrays: a model's output
array becomes the next model's input without a copy, and a demultiplexer's slices are views. Only gathering
(stacking branches) copies.

A model node resolves its model at each request (the version it names, or the model's default version), so a
pipeline follows its models' versions; the registry checks the pipeline again (``revalidate``) when they change.
"""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.image_input import decode_off_loop
from ovms.pipelines.custom_node import CustomNode, import_library
from ovms.pipelines.definition import CUSTOM, MAX_DEMULTIPLY_COUNT, REQUEST, NodeDefinition, PipelineDefinition
from ovms.pipelines.plan import NodePlan, Plan, make_plan
from ovms.servable import InferServable, validate_inputs
from ovms.types import InferRequest, InferResponse, Tensor, TensorSpec

log = logging.getLogger("ovms.pipelines")

Key = tuple[int, ...]  # a branch: the slice index at each open demultiplexing level


class Pipeline(InferServable):
    """A ``pipeline_config_list`` entry, loaded: served as version 1 of its name, as OVMS does."""

    platform = "OpenVINO"

    def __init__(self, definition: PipelineDefinition, registry) -> None:
        self.name = definition.name
        self.version = 1
        self.definition = definition
        self._registry = registry
        self._custom: dict[str, CustomNode] = {}
        try:
            modules = {}
            for node in definition.nodes:
                if node.type == CUSTOM:
                    if node.library.name not in modules:
                        modules[node.library.name] = import_library(node.library)
                    self._custom[node.name] = CustomNode(node.library, modules[node.library.name], node.name,
                                                         dict(node.params))
            self.plan: Plan = make_plan(definition, self._node_specs)
        except BaseException:
            self.close()
            raise

    # ---- metadata and checks ------------------------------------------------------------------------------

    def _node_specs(self, node: NodeDefinition) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        if node.type == CUSTOM:
            custom = self._custom[node.name]
            return custom.inputs, custom.outputs
        try:
            servable = self._registry.resolve(node.model_name, node.version)
        except ServingError as exc:
            raise ModelLoadError(f"Pipeline definition has reference to missing model - pipeline {self.name}: node "
                                 f"{node.name} uses model {node.model_name}"
                                 + (f" version {node.version}" if node.version else "")
                                 + f", which is not available ({exc.message})") from None
        if not isinstance(servable, InferServable):
            raise ModelLoadError(f"Pipeline definition has reference to missing model - pipeline {self.name}: node "
                                 f"{node.name} uses {node.model_name}, which does not take tensor requests")
        return {s.name: s for s in servable.inputs}, {s.name: s for s in servable.outputs}

    def revalidate(self) -> None:
        self.plan = make_plan(self.definition, self._node_specs)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.plan.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.plan.outputs

    def close(self) -> None:
        for custom in self._custom.values():
            custom.close()
        self._custom = {}

    # ---- running it ---------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        plan = self.plan
        arrays = await decode_off_loop(validate_inputs(self, request))  # JPEG/PNG to a 4-D input: decoded
        wanted = request.requested_outputs
        if wanted:
            known = {spec.name for spec in plan.outputs}
            for name in wanted:
                if name not in known:
                    raise ServingError(Kind.INVALID_MISSING_OUTPUT, f"Required output: {name}")
        run = _Run(self, plan)
        run.take_request(arrays)
        await run.execute()
        outputs = [Tensor.from_array(spec.name, run.response(spec.name)) for spec in plan.outputs
                   if not wanted or spec.name in wanted]
        return InferResponse(self.name, self.version, outputs, id=request.id)

    async def call_model(self, node: NodeDefinition, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Infer one branch on the node's model, counted as one of its requests in flight."""
        entry = self._registry.version_entry(node.model_name, node.version)
        servable = entry.enter()
        started = time.perf_counter_ns()
        try:
            response = await servable.infer(InferRequest(
                node.model_name, entry.version, [Tensor.from_array(name, array) for name, array in inputs.items()],
                requested_outputs=[item for item, _ in node.outputs], outputs_as_arrays=True))
        except ServingError as exc:
            entry.stats.fail_count += 1
            raise ServingError(exc.kind, f"{exc.details + '; ' if exc.details else ''}pipeline {self.name} node "
                                         f"{node.name} (model {node.model_name})") from None
        finally:
            entry.leave()
        entry.stats.success_count += 1
        entry.stats.success_ns += time.perf_counter_ns() - started
        return {tensor.name: tensor.as_array() for tensor in response.outputs}


class _Run:
    """One request's pass through the pipeline: every node's outputs, per branch."""

    __slots__ = ("pipeline", "plan", "values", "shards")

    def __init__(self, pipeline: Pipeline, plan: Plan) -> None:
        self.pipeline = pipeline
        self.plan = plan
        self.values: dict[tuple[str, str], dict[Key, np.ndarray]] = {}  # (node, alias) -> branch -> array
        self.shards: dict[tuple[str, Key], int] = {}  # (demultiplexer, branch it ran in) -> slices made

    def take_request(self, arrays: dict[str, np.ndarray]) -> None:
        if not self.plan.request_levels:
            for name, array in arrays.items():
                self.values[(REQUEST, name)] = {(): array}
            return
        split = _split(REQUEST, arrays, self.plan.counts[REQUEST])
        self.shards[(REQUEST, ())] = len(next(iter(split.values()))) if split else 0
        for name, slices in split.items():
            self.values[(REQUEST, name)] = {(i,): part for i, part in enumerate(slices)}

    async def execute(self) -> None:
        done = {plan.node.name: asyncio.get_running_loop().create_future() for plan in self.plan.order}
        tasks = [asyncio.ensure_future(self._node(plan, done)) for plan in self.plan.order]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _node(self, plan: NodePlan, done: dict[str, asyncio.Future]) -> None:
        if plan.depends_on:
            await asyncio.gather(*(done[name] for name in plan.depends_on))
        node = plan.node
        sources = [(input_name, (source.node, source.data_item)) for input_name, source in node.inputs]
        depth = len(plan.levels)
        # The branches this node runs in: those of its first input, cut to its own depth when it gathers.
        first = self.values[sources[0][1]]
        keys = list(dict.fromkeys(key[:depth] for key in first))
        results = await asyncio.gather(*(self._branch(plan, sources, key) for key in keys))
        for key, outputs in zip(keys, results):
            if node.demultiply_count is not None:
                split = _split(node.name, outputs, None if node.demultiply_count == -1 else node.demultiply_count)
                self.shards[(node.name, key)] = len(next(iter(split.values())))
                for item, slices in split.items():
                    store = self.values.setdefault((node.name, node.alias_of(item)), {})
                    for i, part in enumerate(slices):
                        store[key + (i,)] = part
            else:
                for item, array in outputs.items():
                    self.values.setdefault((node.name, node.alias_of(item)), {})[key] = array
        done[node.name].set_result(None)

    async def _branch(self, plan: NodePlan, sources, key: Key) -> dict[str, np.ndarray]:
        node = plan.node
        inputs = {}
        for input_name, source in sources:
            values = self.values[source]
            if node.gather_from_node is not None:
                inputs[input_name] = self._gather(values, key, node.gather_from_node)
            else:
                inputs[input_name] = values[key]
        if node.type == CUSTOM:
            custom = self.pipeline._custom[node.name]
            return await asyncio.to_thread(custom.execute, inputs)
        return await self.pipeline.call_model(node, inputs)

    def _gather(self, values: dict[Key, np.ndarray], key: Key, demultiplexer: str) -> np.ndarray:
        count = self.shards[(demultiplexer, key)]
        return _stack([values[key + (i,)] for i in range(count)], demultiplexer)

    def response(self, output: str) -> np.ndarray:
        """A pipeline output, with the branches still open gathered (outermost level first)."""
        source = dict(self.pipeline.definition.outputs)[output]
        values = self.values[(source.node, source.data_item)]
        levels = self.plan.output_levels[output]

        def collect(key: Key) -> np.ndarray:
            if len(key) == len(levels):
                return values[key]
            count = self.shards[(levels[len(key)], key)]
            return _stack([collect(key + (i,)) for i in range(count)], levels[len(key)])

        return collect(())


def _split(node: str, outputs: dict[str, np.ndarray], count: int | None) -> dict[str, list[np.ndarray]]:
    """Slice a demultiplexer's outputs along their first dimension (views, no copies)."""
    result = {}
    found = None
    for name, array in outputs.items():
        if array.dtype.kind in "OSU":
            raise ServingError(Kind.PIPELINE_STRING_DEMULTIPLICATION_UNSUPPORTED, f"node {node} output {name}")
        if array.ndim < 2:
            raise ServingError(Kind.PIPELINE_WRONG_NUMBER_OF_DIMENSIONS_TO_DEMULTIPLY,
                               f"node {node} output {name} has shape {list(array.shape)}")
        n = array.shape[0]
        if count is not None and n != count:
            raise ServingError(Kind.PIPELINE_DEMULTIPLY_COUNT_MISMATCH,
                               f"node {node} output {name}: demultiply_count {count}, first dimension {n}")
        if found is not None and n != found:
            raise ServingError(Kind.PIPELINE_DEMULTIPLY_COUNT_MISMATCH,
                               f"node {node} outputs have different first dimensions ({found} and {n})")
        found = n
        if n == 0:
            raise ServingError(Kind.PIPELINE_DEMULTIPLEXER_NO_RESULTS, f"node {node} output {name} is empty")
        if n > MAX_DEMULTIPLY_COUNT:
            raise ServingError(Kind.PIPELINE_TOO_LARGE_DIMENSION_SIZE_TO_DEMULTIPLY,
                               f"node {node} output {name}: {n} slices, at most {MAX_DEMULTIPLY_COUNT}")
        result[name] = list(array)
    return result


def _stack(parts: list[np.ndarray], demultiplexer: str) -> np.ndarray:
    shapes = {part.shape for part in parts}
    if len(shapes) > 1:
        raise ServingError(Kind.PIPELINE_INCONSISTENT_SHARD_DIMENSIONS,
                           f"branches of {demultiplexer} gave shapes {sorted(map(list, shapes))}")
    return np.stack(parts)
