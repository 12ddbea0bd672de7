"""The composition root: every store, and the service over them, is built here from the config,
and handed in. The ingress, the model servers, ``cascade batch``, ``cascade refresh``,
``cascade simulate`` and the tests build through these functions; nothing below them opens a
path of its own accord. Today's stores are the local ones (files and SQLite on one host,
``serving.stores``)."""

from __future__ import annotations

from typing import Callable

from distill.registry import Registry
from serving.cascade import Redact
from serving.config import CascadeConfig, Paths
from serving.feedback import FeedbackLedger
from serving.guards import InFlightLimit
from serving.log_writer import GroupCommitLog
from serving.segments import SegmentWriter
from serving.service import CascadeService, Metrics, ModelClient
from serving.shared_state import SharedRouting
from serving.stores import SYNC_EVERY_S, FileStateStore, StateStore, Stores
from serving.traffic import TrafficLog, TrafficReader

LOG_BATCH = 512  # an ingress replica's log write takes further appends while it holds fewer records


def open_registry(paths: Paths) -> Registry:
    """The model registry: versions, their pointers and history."""
    return Registry(paths.registry)


def open_state(paths: Paths) -> StateStore:
    """The documents every replica shares (admin overrides, live control, shadow evidence)."""
    return FileStateStore(paths.registry)


def open_routing(paths: Paths, check_every_s: float = SYNC_EVERY_S) -> SharedRouting:
    """The admin's overrides, as every replica and the model servers read them."""
    return SharedRouting(open_state(paths), check_every_s)


def escalation_writer(config: CascadeConfig) -> SegmentWriter:
    """A synchronous writer of escalation records (``cascade batch``; a replica uses ``Stores.escalations``)."""
    return SegmentWriter(config.paths().escalations, config.log.segment_max_bytes, config.log.segment_max_seconds)


def open_stores(config: CascadeConfig, metrics: Metrics | None = None) -> Stores:
    """The stores of one ingress replica; write errors are counted on ``metrics``."""
    paths = config.paths()
    retention_s = config.feedback.retention_hours * 3600

    def counter(name: str) -> Callable[[], None] | None:
        return (lambda: metrics.inc(name)) if metrics is not None else None

    return Stores(
        registry=open_registry(paths),
        state=open_state(paths),
        escalations=GroupCommitLog(escalation_writer(config), LOG_BATCH, on_written=getattr(metrics, "record_log_write", None),
                                   on_error=counter("cascade_log_write_errors_total")),
        feedback_log=GroupCommitLog(SegmentWriter(paths.feedback)),
        feedback=FeedbackLedger(paths.feedback, retention_s),
        # every answered request, kept durably so that feedback can name any item (serving.traffic)
        traffic=TrafficLog(paths.traffic, retention_s, on_error=counter("cascade_traffic_write_errors_total"))
        if config.feedback.keep_traffic else None,
        traffic_lookup=TrafficReader(paths.traffic, retention_s),
    )


def build_service(config: CascadeConfig, student: ModelClient, teacher: ModelClient, metrics: Metrics | None = None,
                  in_flight: InFlightLimit | None = None, redact: Redact | None = None,
                  shared_check_every_s: float = SYNC_EVERY_S) -> CascadeService:
    """One ingress replica's service over freshly opened stores (closed with the service)."""
    return CascadeService(config, student, teacher, open_stores(config, metrics), metrics, in_flight, redact,
                          shared_check_every_s)
