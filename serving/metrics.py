"""Every metric of the cascade, in one place: names, kinds, help texts and labels (``SPECS``),
the recorders the Serve deployments use, and the reader behind the built-in dashboard.

Metrics go through Ray's metrics API (``ray.util.metrics``): each replica, in whatever process
or node it runs, reports to its node's metrics agent, which serves them all on the node's
metrics export port for Prometheus. Ray names them ``ray_<name>``; the shipped scrape config
(``deploy/prometheus/prometheus.yml``) renames ``ray_cascade_*`` back to ``cascade_*``, and
``read_figures`` does the same for the dashboard.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from router.decision import student_scores
from serving.api import ClassifyResponse, LiveStatus

logger = logging.getLogger("cascade")

RAY_PREFIX = "ray_"  # what Ray puts before a custom metric's name on export

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (Prometheus conventions, prefix ``cascade_``), kind, help and labels."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def series_names(self) -> list[str]:
        """The names of the series Prometheus stores for it."""
        if self.kind == "histogram":
            return [f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"]
        return [self.name]


SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("cascade_requests_total", "counter", "classify requests answered, by mode", ("mode",)),
        MetricSpec("cascade_items_total", "counter", "texts answered, by the tier that answered and the request's mode", ("tier", "mode")),
        MetricSpec("cascade_escalations_total", "counter", "texts the policy wanted the teacher to answer, by reason (unsure, forced); degraded ones included", ("reason",)),
        MetricSpec("cascade_teacher_consulted_total", "counter", "texts the teacher's answer came back for (answered or audited), by reason (unsure, forced, audit)", ("reason",)),
        MetricSpec("cascade_degraded_total", "counter", "texts the student answered although the teacher was wanted, by cause", ("cause",)),
        MetricSpec("cascade_teacher_budget_rejections_total", "counter", "unsure texts the teacher budget turned away"),
        MetricSpec("cascade_shed_requests_total", "counter", "requests refused with 429 because the service was overloaded"),
        MetricSpec("cascade_tier_latency_seconds", "histogram", "one model call seen from the ingress, by tier", ("tier",), LATENCY_BUCKETS),
        MetricSpec("cascade_request_latency_seconds", "histogram", "a classify request end to end in the ingress, by mode", ("mode",), LATENCY_BUCKETS),
        MetricSpec("cascade_student_confidence_ratio", "histogram", "the student's calibrated confidence per routed text", (), CONFIDENCE_BUCKETS),
        MetricSpec("cascade_cost_units_total", "counter", "cost units spent, by tier", ("tier",)),
        MetricSpec("cascade_audits_total", "counter", "confident texts the teacher audited"),
        MetricSpec("cascade_audit_agreements_total", "counter", "audited texts on which the student agreed with the teacher"),
        MetricSpec("cascade_log_records_total", "counter", "escalation records written and fsynced"),
        MetricSpec("cascade_log_bytes_total", "counter", "escalation log bytes written and fsynced"),
        MetricSpec("cascade_log_write_errors_total", "counter", "escalation log writes that failed (their records were not acknowledged)"),
        MetricSpec("cascade_feedback_items_total", "counter", "feedback items recorded (new or changed labels), by the tier that answered the item and whether its answer was right (outcome correct, wrong)", ("tier", "outcome")),
        MetricSpec("cascade_traffic_write_errors_total", "counter", "traffic log writes that failed (their requests cannot get feedback)"),
        MetricSpec("cascade_refresh_runs_total", "counter", "refresh rounds recorded in the registry, by outcome (promoted, rejected, failed)", ("outcome",)),
        MetricSpec("cascade_live_threshold", "gauge", "the escalation threshold online control holds the goal with (routing.control)"),
        MetricSpec("cascade_live_estimate_ratio", "gauge", "online control's live estimate: served agreement with the teacher (agreement goals, and accuracy goals until outcome feedback suffices), served accuracy (accuracy goals with feedback) or teacher share (budget goals)"),
        MetricSpec("cascade_live_bound_ratio", "gauge", "the estimate's certified bound: a lower confidence sequence, 95 % at every look at once, for agreement and accuracy; the share itself for budgets"),
        MetricSpec("cascade_live_audit_probability_ratio", "gauge", "the audit probability of confident texts just above the live threshold (where near) and of the more confident rest (where far): audits go where the doubt is", ("where",)),
        MetricSpec("cascade_live_started_from_shadow", "gauge", "1 when online control started the serving student from its shadow's evidence, 0 when from the safe start (every text to the teacher)"),
        MetricSpec("cascade_live_drift_restarts", "gauge", "times the serving student's evidence restarted because recent traffic disagreed with the teacher more than it predicted"),
        MetricSpec("cascade_live_target_ratio", "gauge", "the figure the goal needs: agreement, accuracy (accuracy goals: the validated agreement until feedback suffices, then the target or the teacher's live accuracy) or the budget share"),
        MetricSpec("cascade_goal_held", "gauge", "1 while the goal holds on live traffic at the live threshold, with its bound; 0 when it does not"),
        MetricSpec("cascade_goal_budget_limited", "gauge", "1 while the goal needs more teacher than routing.teacher_budget allows (the budget wins)"),
        MetricSpec("cascade_teacher_batch_texts", "histogram", "texts in one teacher forward pass, gathered across requests", (), BATCH_BUCKETS),
        MetricSpec("cascade_model_info", "gauge", "1 for each model version a replica serves, 0 once it swapped it out", ("role", "version")),
    )
}


def series_names() -> set[str]:
    """Every series name the cascade exports (after the ``ray_`` prefix is stripped)."""
    return {name for spec in SPECS.values() for name in spec.series_names()}


def _ray_metric(spec: MetricSpec):
    from ray.util import metrics as ray_metrics

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
    return ray_metrics.Histogram(spec.name, description=spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)


class Recorder:
    """The Ray metric objects of some ``SPECS`` entries, built when a replica starts.

    >>> metrics = Recorder("cascade_log_records_total")
    >>> metrics.inc("cascade_log_records_total", 3)
    """

    def __init__(self, *names: str):
        self._metrics = {name: _ray_metric(SPECS[name]) for name in names}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value > 0:
            self._metrics[name].inc(value, tags=labels or None)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].set(value, tags=labels or None)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].observe(value, tags=labels or None)


class ModelInfo:
    """``cascade_model_info{role, version}``: 1 for the version this replica serves, 0 for the
    one it swapped out. Ray drops a gauge that is not set again within a few report intervals,
    so a daemon thread sets it again every ``every_s`` seconds."""

    def __init__(self, role: str, every_s: float = 1.0):
        self.role = role
        self.version: str | None = None
        self._gauge = Recorder("cascade_model_info")
        self._lock = threading.Lock()
        threading.Thread(target=self._keep_alive, args=(every_s,), daemon=True).start()

    def serving(self, version: str) -> None:
        """Report that the replica now serves ``version``."""
        with self._lock:
            if self.version is not None and self.version != version:
                self._gauge.set("cascade_model_info", 0, role=self.role, version=self.version)
            self.version = version
            self._gauge.set("cascade_model_info", 1, role=self.role, version=version)

    def _keep_alive(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            with self._lock:
                if self.version is not None:
                    self._gauge.set("cascade_model_info", 1, role=self.role, version=self.version)


class IngressMetrics(Recorder):
    """What the ingress records: requests, items by tier, escalations, degradations, cost,
    confidence, latencies, audits and its escalation log's writes. Counter increments are
    summed in memory and handed to Ray once every ``flush_every_s`` by a daemon thread: a
    Ray metric call per counter per request was about 6 % of the ingress's CPU under load."""

    def __init__(self, student_cost: float, flush_every_s: float = 1.0):
        super().__init__(
            "cascade_requests_total", "cascade_items_total", "cascade_escalations_total", "cascade_teacher_consulted_total", "cascade_degraded_total",
            "cascade_teacher_budget_rejections_total", "cascade_shed_requests_total", "cascade_tier_latency_seconds",
            "cascade_request_latency_seconds", "cascade_student_confidence_ratio", "cascade_cost_units_total",
            "cascade_audits_total", "cascade_audit_agreements_total",
            "cascade_log_records_total", "cascade_log_bytes_total", "cascade_log_write_errors_total",
            "cascade_feedback_items_total", "cascade_traffic_write_errors_total",
            "cascade_live_threshold", "cascade_live_estimate_ratio", "cascade_live_bound_ratio", "cascade_live_target_ratio",
            "cascade_goal_held", "cascade_goal_budget_limited", "cascade_live_audit_probability_ratio", "cascade_live_started_from_shadow",
            "cascade_live_drift_restarts",
        )
        self.student_cost = student_cost
        self._audits_seen = (0, 0)  # (audited, agreed) already exported
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._pending_lock = threading.Lock()
        threading.Thread(target=self._flush_forever, args=(flush_every_s,), daemon=True).start()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter (exported at the next flush)."""
        if value > 0:
            key = (name, tuple(sorted(labels.items())))
            with self._pending_lock:
                self._pending[key] = self._pending.get(key, 0.0) + value

    def flush(self) -> None:
        """Hand the summed increments to Ray's metrics."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for (name, labels), value in pending.items():
            super().inc(name, value, **dict(labels))

    def _flush_forever(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            try:
                self.flush()
            except Exception as err:  # a metrics hiccup must not stop later flushes
                logger.warning("metrics flush failed: %r", err)

    def record_response(self, response: ClassifyResponse, mode: str, seconds: float) -> None:
        """Count one answered request from its items (tier, reason, cause, confidence, cost)."""
        self.inc("cascade_requests_total", mode=mode)
        self.observe("cascade_request_latency_seconds", seconds, mode=mode)
        tiers: dict[str, int] = {}
        escalated: dict[str, int] = {}
        consulted: dict[str, int] = {}
        causes: dict[str, int] = {}
        cost = {"student": 0.0, "teacher": 0.0}
        for p in response.predictions:
            tiers[p.tier] = tiers.get(p.tier, 0) + 1
            if p.escalated:
                escalated[p.reason] = escalated.get(p.reason, 0) + 1
            if p.consulted:
                consulted[p.reason] = consulted.get(p.reason, 0) + 1
            if p.degraded and p.cause:
                causes[p.cause] = causes.get(p.cause, 0) + 1
            if p.confidence is not None:
                self.observe("cascade_student_confidence_ratio", p.confidence)
            # the student's units where it scored the item (router.decision decides it); the rest is the teacher's
            student_part = self.student_cost if student_scores(mode, p.degraded) else 0.0
            cost["student"] += student_part
            cost["teacher"] += p.cost - student_part
        for tier, n in tiers.items():
            self.inc("cascade_items_total", n, tier=tier, mode=mode)
        for reason, n in escalated.items():
            self.inc("cascade_escalations_total", n, reason=reason)
        for reason, n in consulted.items():
            self.inc("cascade_teacher_consulted_total", n, reason=reason)
        for cause, n in causes.items():
            self.inc("cascade_degraded_total", n, cause=cause)
        self.inc("cascade_teacher_budget_rejections_total", causes.get("teacher_budget", 0))
        for tier, units in cost.items():
            self.inc("cascade_cost_units_total", units, tier=tier)

    def record_live(self, status: LiveStatus) -> None:
        """Export online control's state after a sync (each replica exports the shared state:
        aggregate with max, not sum)."""
        if status.threshold is None:
            return
        self.set("cascade_live_threshold", status.threshold)
        for name, value in (("cascade_live_estimate_ratio", status.estimate), ("cascade_live_bound_ratio", status.bound),
                            ("cascade_live_target_ratio", status.target)):
            if value is not None:
                self.set(name, value)
        if status.held is not None:  # None: control has not stepped on evidence yet (just after a promotion)
            self.set("cascade_goal_held", float(status.held))
        self.set("cascade_goal_budget_limited", float(status.budget_limited))
        for where, value in (("near", status.audit_near), ("far", status.audit_far)):
            if value is not None:
                self.set("cascade_live_audit_probability_ratio", value, where=where)
        if status.started_from is not None:
            self.set("cascade_live_started_from_shadow", float(status.started_from == "shadow"))
        self.set("cascade_live_drift_restarts", float(status.drift_restarts))

    def record_log_write(self, records: int, size: int) -> None:
        """Count one durable write of the escalation log: its records and bytes."""
        self.inc("cascade_log_records_total", records)
        self.inc("cascade_log_bytes_total", size)

    def record_audits(self, audited: int, agreed: int) -> None:
        """Export the growth of the cascade's running audit tally since the last call."""
        seen_audited, seen_agreed = self._audits_seen
        self.inc("cascade_audits_total", audited - seen_audited)
        self.inc("cascade_audit_agreements_total", agreed - seen_agreed)
        self._audits_seen = (audited, agreed)


def refresh_outcome(event: dict) -> str | None:
    """The outcome of a refresh round recorded in a registry history event, or None for
    other events: a gate decision promotes or rejects; ``refresh_failed`` is a round that crashed."""
    if event.get("event") == "gate":
        return "promoted" if event.get("promoted") else "rejected"
    if event.get("event") == "refresh_failed":
        return "failed"
    return None


# ---- reading the exported metrics back, for the built-in dashboard ----


class HistogramFigures(BaseModel):
    """A histogram summed over replicas: cumulative counts per upper bound, count and sum."""

    buckets: list[tuple[float, float]] = []
    count: float = 0.0
    sum: float = 0.0


class DashboardFigures(BaseModel):
    """Cumulative totals over every replica, for the dashboard page (which charts their rates)."""

    time: float
    requests: float = 0.0
    items: dict[str, float] = {}  # by tier
    escalations: dict[str, float] = {}  # by reason: the policy wanted the teacher
    teacher_consulted: dict[str, float] = {}  # by reason: the teacher's answer came back (answered or audited)
    degraded: dict[str, float] = {}  # by cause
    cost_units: dict[str, float] = {}  # by tier
    audits: float = 0.0
    audit_agreements: float = 0.0
    log_records: float = 0.0
    log_bytes: float = 0.0
    log_write_errors: float = 0.0
    refresh_runs: dict[str, float] = {}  # by outcome
    feedback: dict[str, float] = {}  # feedback items recorded, by "<tier> <outcome>" (outcome correct or wrong)
    live: dict[str, float] = {}  # online control's gauges (threshold, estimate, bound, target, held, budget_limited); max over replicas
    latency: dict[str, HistogramFigures] = {}  # "student", "teacher" (per call) and "end_to_end"
    versions: dict[str, list[str]] = {}  # by role: the versions some replica serves now
    sources: int = 0  # metrics endpoints read


def cascade_exposition(text: str) -> str:
    """The cascade's lines of a node's exposition text (Ray's own metrics are many and skipped
    before parsing), with Ray's ``ray_`` prefix removed."""
    marker = f"{RAY_PREFIX}cascade_"
    kept = []
    for line in text.splitlines():
        if line.startswith(marker):
            kept.append(line[len(RAY_PREFIX):])
        elif line.startswith(("# HELP ", "# TYPE ")) and line[7:].startswith(marker):
            kept.append(line[:7] + line[7 + len(RAY_PREFIX):])
    return "\n".join(kept) + "\n"


def read_figures(texts: Iterable[str]) -> DashboardFigures:
    """Sum the cascade's metrics over every replica found in the nodes' exposition ``texts``."""
    figures = DashboardFigures(time=time.time())
    buckets: dict[str, dict[float, float]] = {}
    for text in texts:
        figures.sources += 1
        for family in text_string_to_metric_families(cascade_exposition(text)):
            for sample in family.samples:
                _add_sample(figures, buckets, sample.name, sample.labels, sample.value)
    for key, by_bound in buckets.items():
        figures.latency.setdefault(key, HistogramFigures()).buckets = sorted(by_bound.items())
    for role in figures.versions:
        figures.versions[role] = sorted(set(figures.versions[role]))
    return figures


_TOTALS = {
    "cascade_requests_total": "requests", "cascade_audits_total": "audits", "cascade_audit_agreements_total": "audit_agreements",
    "cascade_log_records_total": "log_records", "cascade_log_bytes_total": "log_bytes", "cascade_log_write_errors_total": "log_write_errors",
}
_BY_LABEL = {
    "cascade_items_total": ("items", "tier"), "cascade_escalations_total": ("escalations", "reason"),
    "cascade_teacher_consulted_total": ("teacher_consulted", "reason"),
    "cascade_degraded_total": ("degraded", "cause"), "cascade_cost_units_total": ("cost_units", "tier"),
    "cascade_refresh_runs_total": ("refresh_runs", "outcome"),
}

_LIVE = {
    "cascade_live_threshold": "threshold", "cascade_live_estimate_ratio": "estimate", "cascade_live_bound_ratio": "bound",
    "cascade_live_target_ratio": "target", "cascade_goal_held": "held", "cascade_goal_budget_limited": "budget_limited",
}


def _add_sample(figures: DashboardFigures, buckets: dict[str, dict[float, float]], name: str, labels: dict[str, str], value: float) -> None:
    if name in _TOTALS:
        setattr(figures, _TOTALS[name], getattr(figures, _TOTALS[name]) + value)
    elif name in _BY_LABEL:
        field, label = _BY_LABEL[name]
        by = getattr(figures, field)
        by[labels.get(label, "")] = by.get(labels.get(label, ""), 0.0) + value
    elif name == "cascade_feedback_items_total":
        key = f"{labels.get('tier', '')} {labels.get('outcome', '')}"
        figures.feedback[key] = figures.feedback.get(key, 0.0) + value
    elif name in _LIVE:  # every replica exports the shared state: the max is the state
        figures.live[_LIVE[name]] = max(figures.live.get(_LIVE[name], value), value)
    elif name == "cascade_model_info" and value > 0:
        figures.versions.setdefault(labels.get("role", ""), []).append(labels.get("version", ""))
    elif name.startswith(("cascade_tier_latency_seconds", "cascade_request_latency_seconds")):
        key = labels.get("tier", "") if name.startswith("cascade_tier") else "end_to_end"
        histogram = figures.latency.setdefault(key, HistogramFigures())
        if name.endswith("_bucket"):
            bound = float(labels["le"])
            if bound == float("inf"):
                return  # the count holds it; JSON has no infinity
            by_bound = buckets.setdefault(key, {})
            by_bound[bound] = by_bound.get(bound, 0.0) + value
        elif name.endswith("_count"):
            histogram.count += value
        elif name.endswith("_sum"):
            histogram.sum += value


def node_metrics_urls() -> list[str]:
    """The metrics export endpoint of every live Ray node (call inside a Ray worker or driver)."""
    import ray

    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


class ClusterMetricsReader:
    """Reads every node's metrics export endpoint and sums the cascade's figures over all
    replicas, so a dashboard poll answered by any ingress replica shows the whole service."""

    def __init__(self, nodes_every_s: float = 30.0, timeout_s: float = 2.0):
        self.nodes_every_s = nodes_every_s  # how long the list of nodes is reused
        self.timeout_s = timeout_s
        self._urls: list[str] = []
        self._urls_at = float("-inf")

    async def figures(self) -> DashboardFigures:
        if time.monotonic() - self._urls_at > self.nodes_every_s:
            try:
                self._urls = await asyncio.to_thread(node_metrics_urls)
                self._urls_at = time.monotonic()
            except Exception as err:  # the GCS briefly unreachable: keep the nodes known so far
                logger.warning("cannot list the Ray nodes: %r", err)
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            answers = await asyncio.gather(*(client.get(url) for url in self._urls), return_exceptions=True)
        texts = [a.text for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
        return await asyncio.to_thread(read_figures, texts)


class FiguresHistory:
    """The dashboard's recent past, kept on the server: cluster figures sampled every
    ``every_s`` seconds for ``span_s``, so the page opens on charts that already have history.
    One runs in the single ``Monitor`` replica, so every ingress replica serves the same one."""

    def __init__(self, reader: ClusterMetricsReader, every_s: float = 5.0, span_s: float = 900.0):
        self.reader = reader
        self.every_s = every_s
        self.samples: collections.deque[DashboardFigures] = collections.deque(maxlen=max(1, int(span_s / every_s)))

    async def run(self) -> None:
        """Sample forever (a failed read is skipped, not fatal)."""
        while True:
            try:
                self.samples.append(await self.reader.figures())
            except Exception as err:
                logger.warning("dashboard history: cannot read the figures: %r", err)
            await asyncio.sleep(self.every_s)

    def recent(self) -> list[DashboardFigures]:
        return list(self.samples)
