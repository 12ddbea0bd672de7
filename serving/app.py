"""The Ray Serve application: an ingress (which also writes the escalation log), a student and
a teacher deployment (one ``ModelServer`` class, batched), and the ``Monitor``, which exports
refresh rounds and keeps the dashboard's recent past. ``build_app`` assembles it from a ``CascadeConfig``. Deployments stay thin: the
ingress wires handles into ``serving.service.CascadeService`` and serves ``serving.http``."""


import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from distill.errors import RegistryError
from distill.registry import Registry
from serving.remote import model_labels
from serving.cascade import ModelOutput
from serving.compose import build_service, open_registry
from serving.config import CascadeConfig, ConfigError, ModelDeploymentConfig, Paths
from serving.errors import Unavailable
from serving.guards import BearerToken, GuardSettings, InFlightLimit
from serving.http import build_api
from serving.metrics import ClusterMetricsReader, FiguresHistory, IngressMetrics, Recorder, refresh_outcome
from serving.model_server import BatchedModel
from serving.redaction import load_redactor

logger = logging.getLogger("cascade")


@serve.deployment
class ModelServer(BatchedModel):
    """A student or teacher deployment: a ``BatchedModel`` whose ``user_config`` Serve applies
    in place (``reconfigure``), so a new model version swaps in without a replica restart."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.configure(user_config)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class Monitor:
    """The application's single watcher, so nothing is counted or kept twice: it exports the
    student's refresh rounds by outcome, read from the registry history (``cascade refresh``
    runs in its own process, without Ray), and keeps the dashboard's recent past (cluster
    figures sampled every few seconds), which every ingress replica serves alike."""

    def __init__(self, paths: Paths, poll_s: float, history_every_s: float):
        self.metrics = Recorder("cascade_refresh_runs_total")
        threading.Thread(target=self._export, args=(open_registry(paths), poll_s), daemon=True).start()
        self.history = FiguresHistory(ClusterMetricsReader(), history_every_s)
        threading.Thread(target=asyncio.run, args=(self.history.run(),), name="dashboard-history", daemon=True).start()

    def recent(self) -> list[dict[str, Any]]:
        """The dashboard's recent past, oldest first."""
        return [figures.model_dump(mode="json") for figures in self.history.recent()]

    def _export(self, registry: Registry, every_s: float) -> None:
        """Count rounds as they are recorded, checking every ``every_s`` seconds (rounds recorded
        before this replica started are not counted)."""
        seen = len(registry.history("student"))
        while True:
            try:
                events = registry.history("student")
            except OSError as err:
                logger.warning("cannot read the registry history: %r", err)
                events = []
            for event in events[seen:]:
                outcome = refresh_outcome(event)
                if outcome is not None:
                    self.metrics.inc("cascade_refresh_runs_total", outcome=outcome)
            seen = max(seen, len(events))
            time.sleep(every_s)


STUDENT_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class HandleClient:
    """A model deployment's ``DeploymentHandle`` as the service's ``ModelClient``. A student
    replica that died or is restarting is ``Unavailable`` (503, Retry-After): every request
    needs the student. A teacher's failures propagate, and the cascade degrades its items."""

    def __init__(self, handle: DeploymentHandle, role: str):
        self.handle, self.role = handle, role

    async def predict(self, texts: list[str]) -> ModelOutput:
        try:
            return await self.handle.predict.remote(texts)
        except STUDENT_GONE as err:
            if self.role != "student":
                raise
            raise Unavailable(f"student unavailable, retry shortly: {type(err).__name__}") from err

    async def info(self) -> dict[str, Any]:
        return await self.handle.info.remote()

    async def reload(self) -> str:
        return await self.handle.reload.remote()


class InlineClient:
    """The student running in the ingress process (placement ``ingress``) as a ``ModelClient``."""

    def __init__(self, model: BatchedModel):
        self.model = model

    async def predict(self, texts: list[str]) -> ModelOutput:
        return await self.model.predict(texts)

    async def info(self) -> dict[str, Any]:
        return self.model.info()

    async def reload(self) -> str:
        return await self.model.reload()


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP front: wires model handles, the escalation log and metrics into a
    ``CascadeService`` and serves ``serving.http``'s API over it, built per replica."""

    def __init__(self, student: DeploymentHandle | None, teacher: DeploymentHandle, monitor: DeploymentHandle, config: dict):
        self.monitor = monitor
        self.config = CascadeConfig.model_validate(config)
        # with placement "ingress" the student runs in this process, configured by reconfigure()
        self.local_student = (
            BatchedModel("student", self.config.paths(), "cpu", self.config.student.threads, inline=True)
            if student is None
            else None
        )
        self.metrics = IngressMetrics(self.config.routing.student_cost)
        in_flight = InFlightLimit(self.config.ingress.max_in_flight, on_shed=lambda: self.metrics.inc("cascade_shed_requests_total"))
        self.service = build_service(
            self.config,
            InlineClient(self.local_student) if self.local_student is not None else HandleClient(student, "student"),
            HandleClient(teacher, "teacher"),
            self.metrics,
            in_flight,
            load_redactor(self.config.log.redact),
        )
        self.guard = GuardSettings(
            max_body_bytes=self.config.limits.max_body_bytes,
            in_flight=in_flight,
            retry_after_s=self.config.ingress.retry_after_s,
            admin_token=BearerToken.from_environment(),
            feedback_token=BearerToken.feedback(),
        )
        self.cluster_metrics = ClusterMetricsReader()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's HTTP API (Serve calls it once, after ``__init__``)."""
        return build_api(self.service, self.guard, self.cluster_metrics.figures, self.dashboard_history, self.config.app_name)

    async def dashboard_history(self) -> list[dict[str, Any]]:
        """The dashboard's recent past, from the ``Monitor`` (the same whichever replica asks)."""
        return await self.monitor.recent.remote()

    def __del__(self) -> None:
        """On a graceful shutdown (Serve drains requests first), finish the stores' pending writes."""
        service = getattr(self, "service", None)  # None: __init__ failed before it
        if service is not None:
            service.close()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the student's settings (model version, batching) when it runs in the ingress."""
        if self.local_student is not None:
            self.local_student.configure(user_config["student"])


def _user_config(settings: ModelDeploymentConfig) -> dict[str, Any]:
    """What a model's ``user_config`` carries: changing it swaps the model in place."""
    return {
        "model": settings.model,
        "max_batch_size": settings.max_batch_size,
        "batch_wait_timeout_s": settings.batch_wait_timeout_s,
        "poll_registry_s": settings.poll_registry_s,
        # a teacher may be a black-box model over HTTP instead of a registry model
        "remote": remote.model_dump(mode="json") if (remote := getattr(settings, "remote", None)) else None,
    }


def _model_deployment(role: str, settings: ModelDeploymentConfig, config: CascadeConfig):
    options: dict[str, Any] = {
        "name": role.capitalize(),
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "user_config": _user_config(settings),
    }
    if settings.num_replicas == "auto":
        options["autoscaling_config"] = settings.autoscaling_config()
    else:
        options["num_replicas"] = settings.num_replicas
    device = settings.device or ("cuda" if settings.num_gpus > 0 else "cpu")
    threads = settings.threads or max(1, int(settings.num_cpus))  # the cores this replica reserved
    return ModelServer.options(**options).bind(role, config.paths(), device, threads)


def check_label_lists(config: CascadeConfig) -> None:
    """Refuse to start a student and a teacher whose label lists differ, naming the labels.
    Lists are read from the models' ``config.json`` without loading weights; a model that is
    not a local directory (a hub id) is checked at its first answer instead, where a teacher
    with other labels degrades its items."""
    registry = open_registry(config.paths())

    def labels_of(role: str, ref: str | None) -> list[str] | None:
        path = Path(registry.resolve(role, ref))
        return model_labels(path) if (path / "config.json").is_file() else None

    student = labels_of("student", config.student.model)
    remote = config.teacher.remote
    teacher = (remote.labels if remote is not None else labels_of("teacher", config.teacher.model))
    if student is None or teacher is None or student == teacher:
        return
    only_student = [label for label in student if label not in teacher]
    only_teacher = [label for label in teacher if label not in student]
    if only_student or only_teacher:
        differ = f"only the student has {only_student[:10]}; only the teacher has {only_teacher[:10]}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(student, teacher)) if a != b)
        differ = f"the same labels in another order: at index {i} the student has {student[i]!r}, the teacher {teacher[i]!r}"
    raise ConfigError(f"student and teacher have different label lists ({differ}): serve a matching pair")


def build_app(config: CascadeConfig):
    """The whole application, ready for ``serve.run``; refuses a mismatched student and teacher."""
    check_label_lists(config)
    colocated = config.student.placement == "ingress"
    student = None if colocated else _model_deployment("student", config.student, config)
    teacher = _model_deployment("teacher", config.teacher, config)
    monitor = Monitor.bind(config.paths(), config.metrics.refresh_poll_s, config.metrics.history_every_s)
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        max_queued_requests=config.ingress.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.ingress.retry_after_s),
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        logging_config={"enable_access_log": config.ingress.access_log},
        user_config={"student": _user_config(config.student)},
    )
    return ingress.bind(student, teacher, monitor, config.model_dump(mode="json"))


def app_builder(config: CascadeConfig) -> serve.Application:
    """The application of a Serve config file (``import_path: serving.app:app_builder``, see
    ``serving.serve_config``), for ``serve run deploy/serve.yaml`` and ``serve deploy``: Serve
    validates the file's ``args`` as a ``CascadeConfig`` because of the annotation. Unlike
    ``cascade serve`` it does not bootstrap missing models, which would take minutes inside the
    cluster on every deploy: a role served from the registry needs a current version, or the
    deploy fails with a message saying how to build one."""
    registry = open_registry(config.paths())
    for role, settings in (("student", config.student), ("teacher", config.teacher)):
        if settings.model is None and registry.current(role) is None:
            raise RegistryError(f"no current {role} in {registry.root}: run `cascade bootstrap --home {config.home}` before deploying")
    return build_app(config)
