"""The one typed configuration of a running cascade: ``cascade serve --config FILE`` reads it,
the CLI flags override it, and the Serve application is built from it. Unknown or invalid
fields stop start-up with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.config import DEFAULT_GOAL
from serving.remote import RemoteTeacherSettings
from distill.settings import DEFAULT_DATA, Paths, default_home
from router import CostModel, parse_goal
from serving.redaction import load_redactor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_AUTOSCALING: dict[str, Any] = {"min_replicas": 1, "max_replicas": 2}
"""Ray Serve's ``autoscaling_config`` of a deployment with ``num_replicas: auto`` and no ``autoscaling``."""


class ModelDeploymentConfig(_Strict):
    """One model deployment (student or teacher): which model, its batching and its resources."""

    model: str | None = None  # registered version, model directory or hub id; None = the registry's current
    max_batch_size: int = Field(32, ge=1, le=4096)  # texts per forward pass
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=10)  # how long a batch waits to fill
    max_ongoing_requests: int = Field(64, ge=1)  # >= max_batch_size so batches can fill
    num_replicas: int | Literal["auto"] = 1  # "auto" uses `autoscaling`
    autoscaling: dict[str, Any] | None = None  # Ray Serve autoscaling_config, with num_replicas "auto"
    num_cpus: float = Field(0.5, ge=0)  # fractional CPUs let several replicas share a 2-core machine
    num_gpus: float = Field(0.0, ge=0)  # fractional GPUs share one device between replicas
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: CUDA when a GPU is assigned
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: the whole CPUs it reserved (at least 1)
    poll_registry_s: float = Field(5.0, ge=0)  # with model None, check the registry's current pointer this often and hot-swap (0: never)

    def autoscaling_config(self) -> dict[str, Any]:
        """The ``autoscaling_config`` Serve gets with ``num_replicas: auto``."""
        return self.autoscaling or DEFAULT_AUTOSCALING

    @model_validator(mode="after")
    def _batches_can_fill(self) -> "ModelDeploymentConfig":
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches never fill"
            )
        return self


class StudentDeploymentConfig(ModelDeploymentConfig):
    """The student: as a model deployment, or inside the ingress process (``placement: ingress``),
    which saves a network hop per request; the CPU default, since the HTTP path, not the
    sub-millisecond student, bounds single-text throughput there."""

    placement: Literal["deployment", "ingress"] = "ingress"
    threads: int | None = Field(1, ge=1)  # one thread: the student's forward pass is tiny
    # no wait: texts that arrive during a sub-millisecond pass form the next batch anyway, and
    # waiting to fill one only adds latency to every request (see the bench figures in docs/measurements.md)
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)

    @model_validator(mode="after")
    def _gpu_needs_a_deployment(self) -> "StudentDeploymentConfig":
        if self.placement == "ingress" and self.num_gpus > 0:
            raise ValueError("a student on a GPU (num_gpus > 0) needs placement: deployment")
        return self


class TeacherDeploymentConfig(ModelDeploymentConfig):
    """The teacher: a model from the registry (``model``), or a black-box model over HTTP
    (``remote``: an OpenAI-compatible chat endpoint or a JSON endpoint returning probabilities)."""

    remote: RemoteTeacherSettings | None = None  # set: the teacher deployment calls this endpoint instead of loading a model
    # "auto": wait for company up to half the measured time of a batch (serving.model_server.auto_wait_s),
    # so unsure texts from concurrent requests share one forward pass; or a fixed wait in seconds
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=10)] | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherDeploymentConfig":
        if self.remote is not None and self.model is not None:
            raise ValueError("give the teacher a `model` or a `remote` endpoint, not both")
        return self


class IngressConfig(_Strict):
    """The HTTP-facing deployment."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    # overload: past max_in_flight classify requests in a replica, 429 + Retry-After (counted in /v1/stats);
    # past max_queued_requests waiting for a replica, Serve's proxy answers 429 + Retry-After itself
    max_in_flight: int = Field(128, ge=1)
    max_queued_requests: int = Field(512, ge=-1)  # -1: no bound (not advised)
    retry_after_s: int = Field(1, ge=0)  # the Retry-After of a shed request
    access_log: bool = False  # Serve's access log line per request (about 1.4 % of the ingress's CPU under load)

    @model_validator(mode="after")
    def _shedding_leaves_room(self) -> "IngressConfig":
        if self.max_in_flight >= self.max_ongoing_requests:
            raise ValueError(
                f"max_in_flight ({self.max_in_flight}) must be < max_ongoing_requests ({self.max_ongoing_requests}), "
                "or requests queue unshed and health checks find no room"
            )
        return self


class RoutingConfig(_Strict):
    """How the ingress decides which items the teacher sees."""

    # overrides the student's fitted threshold: any finite number, since its range depends on the
    # student's confidence measure ([0, 1] for max_prob and margin, negative for neg_entropy)
    threshold: float | None = Field(None, allow_inf_nan=False)
    goal: str = DEFAULT_GOAL  # the student's policy is fitted for this goal; `cascade serve` refits one fitted for another
    teacher_timeout_s: float = Field(5.0, gt=0)  # an unsure item waits this long for the teacher, then degrades
    teacher_budget: float = Field(1.0, gt=0, le=1)  # max share of items the teacher sees per window; 1 = no cap
    budget_window_s: float = Field(60.0, gt=0)  # the sliding window of the budget
    # share of confident items also sent to the teacher: the unbiased live evidence online control
    # holds the goal with (see docs/live-control.md for why 2 %); 0 turns audits, and control, off
    audit_rate: float = Field(0.02, ge=0, le=1)
    control: bool = True  # with audits on, steer the threshold so that `goal` holds on live traffic
    student_cost: float = Field(CostModel.student_units, ge=0)  # cost units per student call
    teacher_cost: float = Field(CostModel.teacher_units, ge=0)  # cost units per teacher call
    breaker_failures: int = Field(5, ge=1)  # consecutive teacher failures or timeouts that open the circuit breaker
    breaker_reset_s: float = Field(10.0, gt=0)  # open this long, then one probe call decides
    teacher_max_in_flight: int = Field(256, ge=1)  # teacher items in flight per ingress replica; past it: degraded, teacher_overloaded

    @field_validator("goal")
    @classmethod
    def _goal_parses(cls, goal: str) -> str:
        return str(parse_goal(goal))  # a RouterError (ValueError) lists the goals it reads

    def costs(self) -> CostModel:
        """The cost model of these per-call costs."""
        return CostModel(self.student_cost, self.teacher_cost)


GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024
"""The largest message a replica takes over gRPC, which carries every call between deployments on
Ray Serve's fast path (``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``; Ray issue 62982)."""
CALL_OVERHEAD_BYTES = 64 * 1024  # one handle call's envelope besides its texts: request metadata, pickling
ITEM_OVERHEAD_BYTES = 64  # pickling per text of a call


class ProxyConfig(_Strict):
    """What fronts the ingress replicas. ``haproxy`` is Ray Serve's fast path: HAProxy on every
    node forwards to the ingress replicas' own HTTP ports (direct ingress), deployments call each
    other over gRPC, and user code runs on each replica's event loop (``RAY_SERVE_THROUGHPUT_OPTIMIZED``).
    ``serve`` is Ray Serve's Python HTTP proxy, with calls between deployments over Ray's actor RPC.
    Both reach the Ray processes as environment variables set before Ray starts (``ray_env``)."""

    kind: Literal["haproxy", "serve"] = "haproxy"
    admin_host: str = "127.0.0.1"  # where HAProxy's stats page and Prometheus exporter listen; 0.0.0.0: every interface
    stats_port: int = Field(8404, ge=1, le=65535)  # HAProxy's stats page (GET /stats)
    metrics_port: int = Field(9101, ge=1, le=65535)  # HAProxy's own Prometheus exporter (GET /metrics)

    def ray_env(self) -> dict[str, str]:
        """The environment variables that select this proxy in every Ray process (Ray reads them
        when its Serve modules are imported, so they must be set before ``ray start``/``ray.init``)."""
        if self.kind == "serve":
            return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(self.stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.metrics_port),
        }


class LimitsConfig(_Strict):
    """Bounds on one request."""

    max_items: int = Field(256, ge=1)  # texts per request
    max_text_chars: int = Field(10_000, ge=1)  # characters per text
    # request body; larger gets 413 before parsing. Below gRPC's 4 MiB, which bounds every call
    # between deployments on the fast path (see CascadeConfig._calls_fit_grpc)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)

    def call_bytes(self) -> int:
        """The most bytes one call between deployments can carry: a request's texts (UTF-8 takes
        at most the bytes of their JSON, and at most 4 per character) with their envelope."""
        texts = min(self.max_body_bytes, self.max_items * self.max_text_chars * 4)
        return texts + self.max_items * ITEM_OVERHEAD_BYTES + CALL_OVERHEAD_BYTES


class LogConfig(_Strict):
    """The escalation log."""

    path: str | None = None  # directory of JSONL segments; None = <home>/escalations
    segment_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # rotate to a new segment past this size
    segment_max_seconds: float = Field(3600.0, gt=0)  # ... or past this age
    redact: str = "default"  # applied to texts before logging: default (card numbers, e-mails), none, or module:function

    @field_validator("redact")
    @classmethod
    def _redactor_loads(cls, spec: str) -> str:
        load_redactor(spec)  # a RedactionError (ValueError) names what is wrong
        return spec


class FeedbackConfig(_Strict):
    """Outcome feedback (``POST /v1/feedback``, on when ``$CASCADE_FEEDBACK_TOKEN`` is set) and the
    traffic log it needs: every answered request, kept durably for ``retention_hours`` so that
    feedback can name any item, including those the student answered alone."""

    traffic_path: str | None = None  # directory of the replicas' SQLite traffic files; None = <home>/traffic
    path: str | None = None  # directory of feedback segments (JSONL, like the escalation log); None = <home>/feedback
    retention_hours: float = Field(168.0, gt=0)  # how long an answered item can still get feedback
    max_items: int = Field(1000, ge=1)  # feedback items per request
    keep_traffic: bool = True  # false: no traffic log (and no feedback on new answers), for services that never get feedback


class MetricsConfig(_Strict):
    """Prometheus metrics (through Ray's metrics API) and the built-in dashboard."""

    port: int = Field(8080, ge=1, le=65535)  # the node's metrics export port, which Prometheus scrapes (GET /metrics)
    report_interval_s: float = Field(5.0, ge=1, le=60)  # how often replicas report to the node's metrics agent (Ray allows no less than 1 s)
    refresh_poll_s: float = Field(10.0, gt=0)  # how often the Monitor replica reads the registry history for refresh outcomes
    history_every_s: float = Field(5.0, ge=1)  # how often the Monitor samples the figures the dashboard opens on (15 minutes kept)


class CascadeConfig(_Strict):
    """Everything `cascade serve` needs."""

    home: Path = Field(default_factory=default_home)  # registry and caches
    data: str = DEFAULT_DATA  # data set the defaults are bootstrapped from when the registry is empty
    text_column: str | None = None  # its text column (None: guessed from text, sentence, query, ...)
    label_column: str | None = None  # its label column (None: guessed from label, category, intent, ...)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "cascade"
    student: StudentDeploymentConfig = StudentDeploymentConfig()
    teacher: TeacherDeploymentConfig = TeacherDeploymentConfig(num_cpus=0.5, max_batch_size=64, max_ongoing_requests=128)
    ingress: IngressConfig = IngressConfig()
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    metrics: MetricsConfig = MetricsConfig()
    proxy: ProxyConfig = ProxyConfig()

    def paths(self) -> Paths:
        """Where this cascade's files are: its home's layout, with the logs the config moves."""
        return Paths.under(self.home, *(Path(p) if p else None for p in (self.log.path, self.feedback.traffic_path, self.feedback.path)))

    @model_validator(mode="after")
    def _remote_teacher_answers_in_time(self) -> "CascadeConfig":
        remote = self.teacher.remote
        if remote is not None and remote.timeout_s >= self.routing.teacher_timeout_s:
            raise ValueError(
                f"teacher.remote.timeout_s ({remote.timeout_s}) must be below routing.teacher_timeout_s "
                f"({self.routing.teacher_timeout_s}): the cascade would stop waiting before one call could answer"
            )
        return self


    @model_validator(mode="after")
    def _calls_fit_grpc(self) -> "CascadeConfig":
        if self.proxy.kind == "haproxy" and self.limits.call_bytes() > GRPC_MESSAGE_LIMIT:
            raise ValueError(
                f"limits.max_body_bytes ({self.limits.max_body_bytes}) with limits.max_items ({self.limits.max_items}) "
                f"lets one call between deployments carry up to {self.limits.call_bytes()} bytes, over gRPC's "
                f"{GRPC_MESSAGE_LIMIT} on the fast path (Ray issue 62982): lower limits.max_body_bytes, or serve "
                "through Ray Serve's Python proxy (proxy.kind: serve)"
            )
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> "CascadeConfig":
        ports = {"port": self.port, "metrics.port": self.metrics.port}
        if self.proxy.kind == "haproxy":
            ports |= {"proxy.stats_port": self.proxy.stats_port, "proxy.metrics_port": self.proxy.metrics_port}
        taken: dict[int, str] = {}
        for field, port in ports.items():
            if port in taken:
                raise ValueError(f"{field} and {taken[port]} are both {port}: each listener needs its own port")
            taken[port] = field
        return self


class ConfigError(ValueError):
    """A setting that cannot be used: a config file that cannot be read or does not validate, or a
    command's option (``cascade simulate``, ``cascade soak``); the message names the field or option."""


def load_config(path: str | Path | None = None, **overrides: Any) -> CascadeConfig:
    """Read a YAML or JSON config file (or none), apply non-None ``overrides``, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML/JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a mapping of settings at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CascadeConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid config{f' {path}' if path else ''}: {problems}") from err
