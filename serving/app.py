"""The Ray Serve application: a FastAPI ingress, a student and a teacher deployment (one
``ModelServer`` class, batched), and the escalation log writer. ``build_app`` assembles it
from a ``CascadeConfig``; deployments stay thin and call ``serving.cascade.Cascade``."""


import asyncio
import logging
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from distill.escalations import EscalationRecord
from distill.registry import Registry
from router import AuditSampler, CostModel, TeacherRateLimiter
from serving import kserve
from serving.api import ClassifyOptions, ClassifyRequest, ClassifyResponse, ErrorResponse, ModelsResponse, ModelVersions
from serving.cascade import Cascade, ModelOutput
from serving.config import CascadeConfig, ModelDeploymentConfig
from serving.log_writer import SegmentWriter
from serving.metrics import ClusterMetricsReader, DashboardFigures, IngressMetrics, Recorder, refresh_outcome
from serving.model_server import BatchedModel, texts_in

logger = logging.getLogger("cascade")
LOG_BATCH = 512  # records per fsync of the log writer
DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2}  # num_replicas "auto" without an autoscaling config


@serve.deployment
class ModelServer(BatchedModel):
    """A student or teacher deployment: a ``BatchedModel`` whose ``user_config`` Serve applies
    in place (``reconfigure``), so a new model version swaps in without a replica restart."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.configure(user_config)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1024)
class LogWriter:
    """The single writer of the escalation log: batches appends from every ingress replica
    into one fsync. Being a single replica, it also exports the refresh rounds recorded in the
    registry history (``cascade refresh`` runs in its own process), so none is counted twice."""

    def __init__(self, directory: str, max_bytes: int, max_seconds: float, registry: str, refresh_poll_s: float):
        self.writer = SegmentWriter(Path(directory), max_bytes, max_seconds)
        self.metrics = Recorder("cascade_log_records_total", "cascade_log_bytes_total", "cascade_log_write_errors_total", "cascade_refresh_runs_total")
        threading.Thread(target=self._export_refresh_runs, args=(Registry(registry), refresh_poll_s), daemon=True).start()

    @serve.batch(max_batch_size=LOG_BATCH, batch_wait_timeout_s=0.002, batch_size_fn=texts_in)
    async def append(self, calls: list[list[EscalationRecord]]) -> list[int]:
        """Write every call's records, fsync once, and acknowledge each call."""
        bytes_before = self.writer.bytes_written
        try:
            written = await asyncio.to_thread(self.writer.append, [r for call in calls for r in call])
        except OSError:
            self.metrics.inc("cascade_log_write_errors_total")
            raise
        self.metrics.inc("cascade_log_records_total", written)
        self.metrics.inc("cascade_log_bytes_total", self.writer.bytes_written - bytes_before)
        return [len(call) for call in calls]

    def _export_refresh_runs(self, registry: Registry, every_s: float) -> None:
        """Count the student's refresh rounds by outcome as they are recorded, checking every
        ``every_s`` seconds (rounds recorded before this replica started are not counted)."""
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

    def stats(self) -> dict:
        return {"records": self.writer.records_written, "bytes": self.writer.bytes_written}


api = FastAPI(
    title="distill-cascade",
    description="A distilled student answers; unsure items go to the teacher; every escalation is logged for the next student.",
    version="1",
)


@api.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
    )
    return JSONResponse(status_code=422, content={"error": problems})


@api.exception_handler(kserve.V2Error)
async def _refused_v2_request(_: Request, exc: kserve.V2Error) -> JSONResponse:
    return exc.response()


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front: validates requests, runs ``Cascade.classify``, reports health and models."""

    def __init__(self, student: DeploymentHandle | None, teacher: DeploymentHandle, log_writer: DeploymentHandle, config: dict):
        self.config = CascadeConfig.model_validate(config)
        self.student, self.teacher, self.log_writer = student, teacher, log_writer
        # with placement "ingress" the student runs in this process, configured by reconfigure()
        self.local_student = (
            BatchedModel("student", str(self.config.home), "cpu", self.config.student.threads, inline=True)
            if student is None
            else None
        )
        self.cascade: Cascade | None = None
        self._lock = asyncio.Lock()
        self.metrics = IngressMetrics(self.config.routing.student_cost)
        self.cluster_metrics = ClusterMetricsReader()
        self.dashboard_page = resources.files("serving").joinpath("dashboard.html").read_text()
        self.label_only_teachers: set[str] = set()  # versions of black-box teachers that answer with a label alone

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the student's settings (model version, batching) when it runs in the ingress."""
        if self.local_student is not None:
            self.local_student.configure(user_config["student"])

    async def _student_info(self) -> dict:
        if self.local_student is not None:
            return self.local_student.info()
        return await self.student.info.remote()

    async def _ready(self) -> Cascade:
        """Build the cascade once both models answer and agree on their labels."""
        if self.cascade is not None:
            return self.cascade
        async with self._lock:
            if self.cascade is None:
                student, teacher = await asyncio.gather(self._student_info(), self.teacher.info.remote())
                if student["labels"] != teacher["labels"]:
                    raise RuntimeError("student and teacher have different label lists: serve a matching pair")
                routing = self.config.routing
                self.cascade = Cascade(
                    student=self._student_predict,
                    teacher=self._teacher_predict,
                    append_log=self._append_log,
                    labels=student["labels"],
                    costs=CostModel(routing.student_cost, routing.teacher_cost),
                    threshold=routing.threshold,
                    teacher_timeout_s=routing.teacher_timeout_s,
                    budget=TeacherRateLimiter(routing.teacher_budget, routing.budget_window_s) if routing.teacher_budget < 1 else None,
                    auditor=AuditSampler(routing.audit_rate) if routing.audit_rate > 0 else None,
                )
                self.cascade.versions = ModelVersions(student=student["version"], teacher=teacher["version"])
                if teacher["label_only"]:
                    self.label_only_teachers.add(teacher["version"])
        return self.cascade

    async def _student_predict(self, texts: list[str]) -> ModelOutput:
        start = time.perf_counter()
        if self.local_student is not None:
            output = await self.local_student.predict(texts)
        else:
            output = await self.student.predict.remote(texts)
        self.metrics.observe("cascade_tier_latency_seconds", time.perf_counter() - start, tier="student")
        return output

    async def _teacher_predict(self, texts: list[str]) -> ModelOutput:
        start = time.perf_counter()
        output = await self.teacher.predict.remote(texts)
        self.metrics.observe("cascade_tier_latency_seconds", time.perf_counter() - start, tier="teacher")
        return output

    async def _append_log(self, records: list[EscalationRecord]) -> int:
        # a label-only teacher's one-hot rows are marked as such, so refresh trains on them as labels
        records = [r.model_copy(update={"teacher_label_only": True}) if r.teacher_version in self.label_only_teachers else r
                   for r in records]
        chunks = [records[i : i + LOG_BATCH] for i in range(0, len(records), LOG_BATCH)]  # each fits one writer batch
        return sum(await asyncio.gather(*(self.log_writer.append.remote(chunk) for chunk in chunks)))

    @api.post("/v1/classify", response_model=ClassifyResponse, responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def classify(self, body: ClassifyRequest) -> Response:
        """Classify one text or a list; unsure items are escalated to the teacher and logged."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        problem = self._check(texts)
        if problem:
            return JSONResponse(status_code=problem[0], content={"error": problem[1]})
        answer = await self._answer(texts, body.options)
        # serialised once by pydantic-core; FastAPI would validate the model a second time
        return Response(answer.model_dump_json(), media_type="application/json")

    async def _answer(self, texts: list[str], options: ClassifyOptions) -> ClassifyResponse:
        """Run the cascade and record the request's metrics: one path for /v1 and /v2."""
        cascade = await self._ready()
        start = time.perf_counter()
        answer = await cascade.classify(texts, options)
        self.metrics.record_response(answer, options.mode, time.perf_counter() - start)
        self.metrics.record_audits(cascade.audit.audited, cascade.audit.agreed)
        return answer

    def _check(self, texts: list[str]) -> tuple[int, str] | None:
        limits = self.config.limits
        if not texts:
            return 422, "inputs: expected a text or a non-empty list of texts"
        if len(texts) > limits.max_items:
            return 413, f"inputs: {len(texts)} texts, at most {limits.max_items} per request"
        for i, text in enumerate(texts):
            if not text.strip():
                return 422, f"inputs[{i}]: empty or whitespace-only text"
            if len(text) > limits.max_text_chars:
                return 413, f"inputs[{i}]: {len(text)} characters, at most {limits.max_text_chars}"
        return None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """The ingress is alive."""
        return {"status": "alive"}

    @api.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> Any:
        """Both models are loaded and answer."""
        try:
            cascade = await asyncio.wait_for(self._ready(), 10)
        except Exception as err:
            return JSONResponse(status_code=503, content={"error": f"not ready: {err}"})
        return {"status": "ready", "labels": len(cascade.labels)}

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        """Audit agreement so far: the unbiased estimate of the student's agreement with the teacher."""
        cascade = await self._ready()
        low, high = cascade.audit.interval()
        return {"audit": {"audited": cascade.audit.audited, "agreed": cascade.audit.agreed,
                          "agreement": cascade.audit.value, "interval_95": [round(low, 4), round(high, 4)]}}

    @api.get("/v1/models", response_model=ModelsResponse)
    async def models(self) -> ModelsResponse:
        """Labels, versions and the escalation policy in force."""
        cascade = await self._ready()
        student, teacher = await asyncio.gather(self._student_info(), self.teacher.info.remote())
        policy = student["policy"] or {}
        threshold = self.config.routing.threshold if self.config.routing.threshold is not None else policy.get("threshold")
        return ModelsResponse(
            labels=cascade.labels,
            versions=ModelVersions(student=student["version"], teacher=teacher["version"]),
            threshold=threshold,
            temperature=policy.get("temperature"),
            measure=policy.get("measure"),
            goal=policy.get("goal"),
        )

    @api.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(self) -> HTMLResponse:
        """A self-contained page charting cost, teacher share, latency, throughput, audit
        agreement and model versions, refreshed from ``/dashboard/data``."""
        return HTMLResponse(self.dashboard_page)

    @api.get("/dashboard/data", response_model=DashboardFigures)
    async def dashboard_data(self) -> Response:
        """Cumulative figures summed over every replica, read from each node's metrics endpoint."""
        figures = await self.cluster_metrics.figures()
        return Response(figures.model_dump_json(), media_type="application/json")

    # --- the Open Inference Protocol (KServe V2); serving.kserve holds its schemas and translation

    @api.get("/v2", response_model=kserve.ServerMetadata)
    async def v2_server(self) -> kserve.ServerMetadata:
        """V2 server metadata."""
        return kserve.server_metadata()

    @api.get("/v2/health/live")
    async def v2_live(self) -> dict:
        """V2 liveness: the ingress is alive."""
        return {"live": True}

    @api.get("/v2/health/ready", responses={503: {"model": ErrorResponse}})
    async def v2_ready(self) -> Any:
        """V2 readiness: both models are loaded and answer."""
        answer = await self.readyz()
        return answer if isinstance(answer, Response) else {"ready": True}

    @api.get("/v2/models/{name}/ready", responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def v2_model_ready(self, name: str) -> Any:
        """V2 model readiness."""
        kserve.check_model(self.config.app_name, name)
        answer = await self.readyz()
        return answer if isinstance(answer, Response) else {"name": name, "ready": True}

    @api.get("/v2/models/{name}", response_model=kserve.ModelMetadata, responses={404: {"model": ErrorResponse}})
    async def v2_model(self, name: str) -> Any:
        """V2 model metadata: the input ``text`` (BYTES) and the outputs."""
        kserve.check_model(self.config.app_name, name)
        return kserve.model_metadata(name, (await self._student_info())["version"])

    @api.post("/v2/models/{name}/infer", responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
    async def v2_infer(self, name: str, request: Request) -> Response:
        """V2 inference: a BYTES tensor of texts through the same cascade as /v1/classify."""
        kserve.check_model(self.config.app_name, name)
        call = kserve.parse_infer(await request.body(), request.headers.get(kserve.HEADER_LENGTH))
        problem = self._check(call.texts)
        if problem:
            raise kserve.V2Error(*problem)
        return kserve.infer_response(name, call, await self._answer(call.texts, call.options))


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
        options["autoscaling_config"] = settings.autoscaling or DEFAULT_AUTOSCALING
    else:
        options["num_replicas"] = settings.num_replicas
    device = settings.device or ("cuda" if settings.num_gpus > 0 else "cpu")
    threads = settings.threads or max(1, int(settings.num_cpus))  # the cores this replica reserved
    return ModelServer.options(**options).bind(role, str(config.home), device, threads)


def build_app(config: CascadeConfig):
    """The whole application, ready for ``serve.run``."""
    colocated = config.student.placement == "ingress"
    student = None if colocated else _model_deployment("student", config.student, config)
    teacher = _model_deployment("teacher", config.teacher, config)
    log_writer = LogWriter.bind(
        str(config.log_path()), config.log.segment_max_bytes, config.log.segment_max_seconds,
        str(config.home / "registry"), config.metrics.refresh_poll_s,
    )
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        user_config={"student": _user_config(config.student)},
    )
    return ingress.bind(student, teacher, log_writer, config.model_dump(mode="json"))


def app_builder(config: CascadeConfig) -> serve.Application:
    """The application of a Serve config file (``import_path: serving.app:app_builder``, see
    ``serving.serve_config``), for ``serve run deploy/serve.yaml`` and ``serve deploy``: Serve
    validates the file's ``args`` as a ``CascadeConfig`` because of the annotation. Unlike
    ``cascade serve`` it does not bootstrap missing models, which would take minutes inside the
    cluster on every deploy: a role served from the registry needs a current version, or the
    deploy fails with a message saying how to build one."""
    from distill.errors import RegistryError
    from distill.registry import Registry

    registry = Registry(config.home / "registry")
    for role, settings in (("student", config.student), ("teacher", config.teacher)):
        if settings.model is None and registry.current(role) is None:
            raise RegistryError(f"no current {role} in {registry.root}: run `cascade bootstrap --home {config.home}` before deploying")
    return build_app(config)
