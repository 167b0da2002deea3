"""Prometheus metrics with OVMS's family names, labels and histogram buckets.

Requests only touch plain Python counters (a dict lookup and an add); the Prometheus objects are built when
``/metrics`` is scraped, by a custom collector rendered with prometheus-client. OVMS names its counters
without the ``_total`` suffix (``ovms_requests_success``); prometheus-client writes the suffix into HELP/TYPE,
so ``render`` restores OVMS's lines (dashboards written for OVMS query those names).
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

# src/model_metric_reporter.cpp: 33 buckets, floor(10 * 1.8^i) microseconds.
BUCKETS_US = [math.floor(10 * 1.8 ** i) for i in range(33)]

COUNTERS = {
    "ovms_requests_success": "Number of successful requests to a model or a DAG.",
    "ovms_requests_fail": "Number of failed requests to a model or a DAG.",
}
HISTOGRAMS = {
    "ovms_request_time_us": "Processing time of requests to a model or a DAG.",
    "ovms_inference_time_us": "Inference execution time in the OpenVINO backend.",
    "ovms_wait_for_infer_req_time_us": "Request waiting time in the scheduling queue.",
}
GAUGES = {
    "ovms_streams": "Number of OpenVINO execution streams.",
    "ovms_infer_req_queue_size": "Inference request queue size (nireq).",
    "ovms_infer_req_active": "Number of currently consumed inference request from the processing queue.",
    "ovms_current_requests": "Number of inference requests currently in process.",
}
ALL_FAMILIES = {**COUNTERS, **HISTOGRAMS, **GAUGES}
# Enabled when --metrics_enable is given without --metrics_list (OVMS's defaults).
DEFAULT_FAMILIES = ("ovms_requests_success", "ovms_requests_fail", "ovms_request_time_us", "ovms_streams",
                    "ovms_inference_time_us", "ovms_wait_for_infer_req_time_us")


def parse_families(metrics_list: str | Iterable[str] | None) -> frozenset[str]:
    """Families selected by --metrics_list / monitoring.metrics.metrics_list; ValueError names unknown ones."""
    if not metrics_list:
        return frozenset(DEFAULT_FAMILIES)
    names = [n.strip() for n in (metrics_list.split(",") if isinstance(metrics_list, str) else metrics_list)]
    unknown = [n for n in names if n and n not in ALL_FAMILIES]
    if unknown:
        raise ValueError(f"unknown metric name(s) {', '.join(unknown)} in metrics_list; available: "
                         f"{', '.join(ALL_FAMILIES)}")
    return frozenset(n for n in names if n)


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_US) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value_us: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_US, value_us)] += 1
        self.total += value_us
        self.count += 1


GaugeSource = Callable[[], Iterable[tuple[str, str, dict[str, float]]]]


class Metrics:
    """What the server counts. ``enabled`` is the set of families to expose (empty: metrics off)."""

    def __init__(self, enabled: frozenset[str] = frozenset(), *, gauges: GaugeSource | None = None) -> None:
        self.enabled = enabled
        self._requests: dict[tuple, list[int]] = {}  # (api, interface, method, name, version) -> [ok, fail]
        self._histograms: dict[tuple, _Histogram] = {}  # (family, labels...) -> histogram
        self._gauges = gauges
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    @property
    def on(self) -> bool:
        return bool(self.enabled)

    def request(self, api: str, interface: str, method: str, name: str, version: str, ok: bool) -> None:
        key = (api, interface, method, name, version)
        pair = self._requests.get(key)
        if pair is None:
            pair = self._requests[key] = [0, 0]
        pair[0 if ok else 1] += 1

    def observe(self, family: str, labels: tuple, value_us: float) -> None:
        key = (family, *labels)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = _Histogram()
        histogram.observe(value_us)

    # prometheus-client collector protocol
    def collect(self):
        for index, family in enumerate(COUNTERS):
            if family not in self.enabled:
                continue
            metric = Metric(family, COUNTERS[family], "counter")
            for (api, interface, method, name, version), pair in self._requests.items():
                labels = {"api": api, "interface": interface, "method": method, "name": name}
                if version:
                    labels["version"] = version
                metric.add_sample(family, labels, pair[index])
            yield metric
        for family, doc in HISTOGRAMS.items():
            if family not in self.enabled:
                continue
            metric = Metric(family, doc, "histogram")
            for (key_family, *labels), histogram in self._histograms.items():
                if key_family != family:
                    continue
                base = dict(zip(("name", "version", "interface"), labels))
                cumulative = 0
                for bound, count in zip([*map(str, BUCKETS_US), "+Inf"], histogram.counts):
                    cumulative += count
                    metric.add_sample(family + "_bucket", {**base, "le": bound}, cumulative)
                metric.add_sample(family + "_count", base, histogram.count)
                metric.add_sample(family + "_sum", base, histogram.total)
            yield metric
        values: dict[str, Metric] = {}
        if self._gauges is not None:
            for family, name, samples in self._gauges():
                if family not in self.enabled:
                    continue
                metric = values.get(family) or values.setdefault(family, Metric(family, GAUGES[family], "gauge"))
                for version, value in samples.items():
                    metric.add_sample(family, {"name": name, "version": version}, value)
        yield from values.values()

    def render(self) -> bytes:
        text = generate_latest(self.registry).decode()
        for family in COUNTERS:
            text = text.replace(f"# HELP {family}_total ", f"# HELP {family} ")
            text = text.replace(f"# TYPE {family}_total counter", f"# TYPE {family} counter")
        return text.encode()
