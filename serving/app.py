"""The Ray Serve application: a FastAPI ingress (which also writes the escalation log), a
student and a teacher deployment (one ``ModelServer`` class, batched), and ``RefreshRuns``,
which exports refresh rounds. ``build_app`` assembles it from a ``CascadeConfig``; deployments
stay thin and call ``serving.cascade.Cascade``."""


import asyncio
import logging
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from distill.errors import RegistryError
from distill.registry import Registry
from router import AuditSampler, CircuitBreaker, CostModel, TeacherRateLimiter
from serving import admin, kserve
from serving.api import ClassifyOptions, ClassifyRequest, ClassifyResponse, ErrorResponse, ModelsResponse, ModelVersions
from serving.cascade import Cascade, ModelOutput
from serving.config import CascadeConfig, ModelDeploymentConfig
from serving.guards import AdminToken, GuardSettings, InFlightLimit, RequestGuard
from serving.log_writer import GroupCommitLog, SegmentWriter
from serving.metrics import ClusterMetricsReader, DashboardFigures, IngressMetrics, Recorder, refresh_outcome
from serving.model_server import BatchedModel
from serving.redaction import load_redactor

logger = logging.getLogger("cascade")
LOG_BATCH = 512  # an ingress replica's log write takes further appends while it holds fewer records
DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2}  # num_replicas "auto" without an autoscaling config
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 409, 422)}


def _require_admin(request: Request, authorization: str | None = Header(None, description="Bearer <$CASCADE_ADMIN_TOKEN>")) -> None:
    """Let an admin request through only with the bearer token (checked before its body)."""
    guard: GuardSettings | None = getattr(request.app.state, "guard", None)  # set when the ingress is configured
    refusal = (guard.admin_token if guard else AdminToken(None)).refusal(authorization)
    if refusal is not None:
        status, message = refusal
        raise HTTPException(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


ADMIN = Depends(_require_admin)


@serve.deployment
class ModelServer(BatchedModel):
    """A student or teacher deployment: a ``BatchedModel`` whose ``user_config`` Serve applies
    in place (``reconfigure``), so a new model version swaps in without a replica restart."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.configure(user_config)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class RefreshRuns:
    """Exports the student's refresh rounds by outcome, read from the registry history (``cascade
    refresh`` runs in its own process, without Ray). A single replica, so none is counted twice."""

    def __init__(self, registry: str, poll_s: float):
        self.metrics = Recorder("cascade_refresh_runs_total")
        threading.Thread(target=self._export, args=(Registry(registry), poll_s), daemon=True).start()

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


api = FastAPI(
    title="distill-cascade",
    description="A distilled student answers; unsure items go to the teacher; every escalation is logged for the next student.",
    version="1",
)
api.add_middleware(RequestGuard)  # sheds past the in-flight bound; body byte cap and UTF-8 check before parsing


class StudentUnavailable(Exception):
    """The student deployment's replica died or is restarting; every request needs the student."""


STUDENT_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


@api.exception_handler(StudentUnavailable)
async def _student_unavailable(_: Request, exc: StudentUnavailable) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": "1"})


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Every error the framework raises (unknown path, wrong method, ...) as ``{"error": ...}``."""
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


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

    def __init__(self, student: DeploymentHandle | None, teacher: DeploymentHandle, refresh_runs: DeploymentHandle, config: dict):
        # refresh_runs is bound here only so that Serve deploys it with the application
        self.config = CascadeConfig.model_validate(config)
        self.student, self.teacher = student, teacher
        # with placement "ingress" the student runs in this process, configured by reconfigure()
        self.local_student = (
            BatchedModel("student", str(self.config.home), "cpu", self.config.student.threads, inline=True)
            if student is None
            else None
        )
        self.cascade: Cascade | None = None
        self._lock = asyncio.Lock()
        self.metrics = IngressMetrics(self.config.routing.student_cost)
        log = self.config.log
        # this replica's own segments, written and fsynced by one thread (serving.log_writer)
        self.log = GroupCommitLog(
            SegmentWriter(self.config.log_path(), log.segment_max_bytes, log.segment_max_seconds), LOG_BATCH,
            on_written=self.metrics.record_log_write, on_error=lambda: self.metrics.inc("cascade_log_write_errors_total"),
        )
        self.cluster_metrics = ClusterMetricsReader()
        self.dashboard_page = resources.files("serving").joinpath("dashboard.html").read_text()
        self.in_flight = InFlightLimit(
            self.config.ingress.max_in_flight, on_shed=lambda: self.metrics.inc("cascade_shed_requests_total")
        )
        self.admin_token = AdminToken.from_environment()
        self.redact = load_redactor(self.config.log.redact)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the student's settings (model version, batching) when it runs in the ingress."""
        if self.local_student is not None:
            self.local_student.configure(user_config["student"])
        self._guard_requests()

    def _guard_requests(self) -> None:
        """Hand this replica's limits to the ``RequestGuard`` middleware of its FastAPI app (the
        app exists only once Serve has wrapped this object, after ``__init__``)."""
        self.app.state.guard = GuardSettings(
            max_body_bytes=self.config.limits.max_body_bytes,
            in_flight=self.in_flight,
            retry_after_s=self.config.ingress.retry_after_s,
            admin_token=self.admin_token,
        )

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
                    append_log=self.log.append,
                    labels=student["labels"],
                    costs=CostModel(routing.student_cost, routing.teacher_cost),
                    threshold=routing.threshold,
                    teacher_timeout_s=routing.teacher_timeout_s,
                    budget=TeacherRateLimiter(routing.teacher_budget, routing.budget_window_s) if routing.teacher_budget < 1 else None,
                    auditor=AuditSampler(routing.audit_rate) if routing.audit_rate > 0 else None,
                    breaker=CircuitBreaker(routing.breaker_failures, routing.breaker_reset_s),
                    teacher_max_in_flight=routing.teacher_max_in_flight,
                    redact=self.redact,
                )
                self.cascade.versions = ModelVersions(student=student["version"], teacher=teacher["version"])
        return self.cascade

    async def _student_predict(self, texts: list[str]) -> ModelOutput:
        start = time.perf_counter()
        if self.local_student is not None:
            output = await self.local_student.predict(texts)
        else:
            try:
                output = await self.student.predict.remote(texts)
            except STUDENT_GONE as err:  # its replica died or is restarting: the client may retry
                raise StudentUnavailable(f"student unavailable, retry shortly: {type(err).__name__}") from err
        self.metrics.observe("cascade_tier_latency_seconds", time.perf_counter() - start, tier="student")
        return output

    async def _teacher_predict(self, texts: list[str]) -> ModelOutput:
        start = time.perf_counter()
        output = await self.teacher.predict.remote(texts)
        self.metrics.observe("cascade_tier_latency_seconds", time.perf_counter() - start, tier="teacher")
        return output

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
            try:
                text.encode("utf-8")  # a JSON escape such as \ud800 can smuggle in a lone surrogate
            except UnicodeEncodeError as err:
                return 422, f"inputs[{i}]: not valid Unicode at character {err.start} (a lone surrogate)"
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
                          "agreement": cascade.audit.value, "interval_95": [round(low, 4), round(high, 4)]},
                "reliability": self._reliability_stats(cascade)}

    def _reliability_stats(self, cascade: Cascade) -> dict:
        """This replica's fault counters: shed requests, degraded items by cause, log write errors."""
        return {"shed_requests": self.in_flight.shed, "in_flight": self.in_flight.in_flight, **cascade.reliability_stats()}

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

    @api.post("/v1/admin/promote", response_model=admin.PointerResponse, responses=ADMIN_ERRORS, dependencies=[ADMIN])
    async def admin_promote(self, body: admin.PromoteRequest) -> Any:
        """Point a role at a registered version; model servers swap to it within poll_registry_s (or at reload)."""
        return await self._registry_move(admin.promote, body)

    @api.post("/v1/admin/rollback", response_model=admin.PointerResponse, responses=ADMIN_ERRORS, dependencies=[ADMIN])
    async def admin_rollback(self, body: admin.RollbackRequest) -> Any:
        """Move a role's pointer back to its previous version."""
        return await self._registry_move(admin.rollback, body)

    async def _registry_move(self, move: Callable[[Path, Any], admin.PointerResponse], body: Any) -> Any:
        try:
            return await asyncio.to_thread(move, self.config.home, body)
        except RegistryError as err:
            return JSONResponse(status_code=409, content={"error": str(err)})

    @api.post("/v1/admin/threshold", response_model=admin.ThresholdResponse, responses=ADMIN_ERRORS, dependencies=[ADMIN])
    async def admin_threshold(self, body: admin.ThresholdRequest) -> admin.ThresholdResponse:
        """Set this ingress replica's service-wide escalation threshold (null: the student's fitted one)."""
        cascade = await self._ready()
        previous, cascade.threshold = cascade.threshold, body.threshold
        return admin.ThresholdResponse(threshold=body.threshold, previous=previous)

    @api.post("/v1/admin/reload", response_model=admin.ReloadResponse, responses=ADMIN_ERRORS, dependencies=[ADMIN])
    async def admin_reload(self) -> Any:
        """Make the model servers re-read the registry's current pointers now, not at their next poll."""
        student = self.local_student.reload() if self.local_student is not None else self.student.reload.remote()
        try:
            versions = await asyncio.gather(student, self.teacher.reload.remote())
        except Exception as err:  # a version that cannot load: the serving one stays
            return JSONResponse(status_code=409, content={"error": f"reload failed, serving versions kept: {err}"})
        return admin.ReloadResponse(student=versions[0], teacher=versions[1])


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
    refresh_runs = RefreshRuns.bind(str(config.home / "registry"), config.metrics.refresh_poll_s)
    ingress = Ingress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        max_queued_requests=config.ingress.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.ingress.retry_after_s),
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        user_config={"student": _user_config(config.student)},
    )
    return ingress.bind(student, teacher, refresh_runs, config.model_dump(mode="json"))


def app_builder(config: CascadeConfig) -> serve.Application:
    """The application of a Serve config file (``import_path: serving.app:app_builder``, see
    ``serving.serve_config``), for ``serve run deploy/serve.yaml`` and ``serve deploy``: Serve
    validates the file's ``args`` as a ``CascadeConfig`` because of the annotation. Unlike
    ``cascade serve`` it does not bootstrap missing models, which would take minutes inside the
    cluster on every deploy: a role served from the registry needs a current version, or the
    deploy fails with a message saying how to build one."""
    registry = Registry(config.home / "registry")
    for role, settings in (("student", config.student), ("teacher", config.teacher)):
        if settings.model is None and registry.current(role) is None:
            raise RegistryError(f"no current {role} in {registry.root}: run `cascade bootstrap --home {config.home}` before deploying")
    return build_app(config)
