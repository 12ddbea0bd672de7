"""The HTTP API over a ``CascadeService``: ``/v1`` and health, ``/v2`` (the Open Inference
Protocol) and ``/v1/admin`` as their own routers, each route one to three lines; every
``ServingError`` becomes ``{"error": message}`` with its status here, and nowhere else.
Every route that takes a body reads it through ``_read`` (``serving.guards.parse_json``): a
declared content type other than JSON is a 415, a body that is empty, not JSON or nested too
deeply a 422 (400 on ``/v2``), JSON of the wrong shape or types a 422, each naming the problem.
``build_api`` makes one app per ingress replica, with its guard settings given at build."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Awaitable, Callable, Sequence, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from serving import admin, kserve
from serving.api import ClassifyRequest, ClassifyResponse, ErrorResponse, ModelsResponse
from serving.errors import InvalidInput, ServingError
from serving.feedback import FeedbackRequest, FeedbackResponse
from serving.guards import (FEEDBACK_TOKEN_ENV, BearerToken, GuardSettings, InvalidJson, RequestGuard, content_type_refusal,
                            parse_json)
from serving.metrics import DashboardFigures
from serving.service import CascadeService

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (413, 422, 503)}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422)}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 409, 400, 413, 415, 422)}
UNSUPPORTED_MEDIA_TYPE = 415
Body = TypeVar("Body", bound=BaseModel)
Authorization = Annotated[str | None, Header(description="Bearer <$CASCADE_ADMIN_TOKEN> (admin), or <$CASCADE_FEEDBACK_TOKEN> (feedback)")]


def json_body(model: Any) -> Response:
    """A pydantic answer serialised once by pydantic-core (FastAPI would validate it again)."""
    return Response(model.model_dump_json(), media_type="application/json")


def build_api(
    service: CascadeService,
    guard: GuardSettings,
    dashboard_figures: Callable[[], Awaitable[DashboardFigures]],
    dashboard_history: Callable[[], Awaitable[list[dict[str, Any]]]],
    app_name: str,
) -> FastAPI:
    """The whole HTTP API of one ingress replica."""
    api = FastAPI(
        title="distill-cascade",
        description="A distilled student answers; unsure items go to the teacher; every escalation is logged for the next student.",
        version="1",
    )
    api.state.guard = guard
    api.add_middleware(RequestGuard)  # sheds past the in-flight bound; body byte cap and UTF-8 check before parsing
    _handle_errors(api)
    api.include_router(_v1_router(service, guard.admin_token, dashboard_figures, dashboard_history))
    api.include_router(_feedback_router(service, guard.feedback_token or BearerToken(None, FEEDBACK_TOKEN_ENV, "feedback")))
    api.include_router(_v2_router(service, app_name))
    api.include_router(_admin_router(service, guard.admin_token))
    _document_bodies(api, {"/v1/classify": ClassifyRequest, "/v1/feedback": FeedbackRequest,
                           "/v1/admin/promote": admin.PromoteRequest, "/v1/admin/rollback": admin.RollbackRequest,
                           "/v1/admin/threshold": admin.ThresholdRequest, "/v1/admin/shadow": admin.ShadowRequest,
                           "/v2/models/{name}/infer": kserve.InferRequest})
    return api


def _handle_errors(api: FastAPI) -> None:
    @api.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": exc.message}, headers=exc.headers or None)

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """Every error the framework raises (unknown path, wrong method, ...) as ``{"error": ...}``."""
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": _problems(exc.errors())})


def _problems(errors: Sequence[Any]) -> str:
    """Validation errors as one message, each naming where it is (``body`` for the whole body)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors)


class NoBody(BaseModel):
    """The body of a route that takes none: nothing at all, or ``{}``."""

    model_config = ConfigDict(extra="forbid")


def check_content_type(request: Request, also: tuple[str, ...] = ()) -> None:
    """415 unless the request's body is declared JSON (or one of ``also``), or not declared."""
    refusal = content_type_refusal(request.headers.get("content-type"), also)
    if refusal is not None:
        raise ServingError(refusal, UNSUPPORTED_MEDIA_TYPE)


async def _read(model: type[Body], request: Request, optional: bool = False) -> Body:
    """The request's body as ``model``: read and validated by this route, not by FastAPI, whose
    JSON decoding recurses on nesting, answers a body it cannot parse with a bare 'There was an
    error parsing the body', and validates laxly. ``optional``: no body at all is ``model()``."""
    raw = await request.body()
    if optional and not raw:
        return model()
    check_content_type(request)
    return _parse(model, raw)


def _parse(model: type[Body], raw: bytes) -> Body:
    """A request body validated strictly, straight from its bytes (``serving.guards.parse_json``);
    every refusal is a 422 naming the problem."""
    try:
        return parse_json(model, raw)
    except InvalidJson as err:
        raise InvalidInput(str(err)) from None
    except ValidationError as err:
        raise InvalidInput(_problems(err.errors())) from None


def _document_bodies(api: FastAPI, routes: dict[str, type[BaseModel]]) -> None:
    """Put the bodies of routes that parse their own (``_parse``) into the OpenAPI document."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for path, model in routes.items():
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                document["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        return api.openapi_schema

    api.openapi = openapi


def _v1_router(service: CascadeService, token: BearerToken, dashboard_figures: Callable[[], Awaitable[DashboardFigures]],
               dashboard_history: Callable[[], Awaitable[list[dict[str, Any]]]]) -> APIRouter:
    router = APIRouter()
    page = resources.files("serving").joinpath("dashboard.html").read_text()

    @router.post("/v1/classify", response_model=ClassifyResponse, responses={**ERRORS, **BODY_ERRORS, 429: {"model": ErrorResponse}})
    async def classify(request: Request, authorization: Authorization = None) -> Response:
        """Classify one text or a list; unsure items are escalated to the teacher and logged.
        With the admin token, forced teacher items are not capped by the teacher budget."""
        body = await _read(ClassifyRequest, request)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        privileged = authorization is not None and token.refusal(authorization) is None
        return json_body(await service.classify(texts, body.options, privileged))

    @router.get("/healthz")
    async def healthz() -> dict:
        """The ingress is alive."""
        return {"status": "alive"}

    @router.get("/readyz", responses=ERRORS)
    async def readyz() -> dict:
        """Both models are loaded and answer."""
        return await service.readiness()

    @router.get("/v1/stats")
    async def stats() -> dict:
        """Audit agreement so far and this replica's fault counters."""
        return await service.stats()

    @router.get("/v1/models", response_model=ModelsResponse)
    async def models() -> ModelsResponse:
        """Labels, versions and the escalation policy in force, with the threshold every replica uses."""
        return await service.models()

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """A self-contained page charting cost, teacher share, latency, throughput, audit
        agreement and model versions, refreshed from ``/dashboard/data``."""
        return HTMLResponse(page)

    @router.get("/dashboard/data", response_model=DashboardFigures)
    async def dashboard_data() -> Response:
        """Cumulative figures summed over every replica, read from each node's metrics endpoint."""
        return json_body(await dashboard_figures())

    @router.get("/dashboard/history", response_model=list[DashboardFigures])
    async def dashboard_history_() -> JSONResponse:
        """The last 15 minutes of figures, sampled on the server every ``metrics.history_every_s``
        (the same whichever replica answers): the page opens on them."""
        return JSONResponse(await dashboard_history())

    return router


def _v2_router(service: CascadeService, app_name: str) -> APIRouter:
    """The Open Inference Protocol (KServe V2); ``serving.kserve`` holds its schemas and translation."""
    router = APIRouter(prefix="/v2")
    missing = {404: {"model": ErrorResponse}}

    @router.get("", response_model=kserve.ServerMetadata)
    async def v2_server() -> kserve.ServerMetadata:
        """V2 server metadata."""
        return kserve.server_metadata()

    @router.get("/health/live")
    async def v2_live() -> dict:
        """V2 liveness: the ingress is alive."""
        return {"live": True}

    @router.get("/health/ready", responses=ERRORS)
    async def v2_ready() -> dict:
        """V2 readiness: both models are loaded and answer."""
        await service.readiness()
        return {"ready": True}

    @router.get("/models/{name}/ready", responses={**missing, **ERRORS})
    async def v2_model_ready(name: str) -> dict:
        """V2 model readiness."""
        kserve.check_model(app_name, name)
        await service.readiness()
        return {"name": name, "ready": True}

    @router.get("/models/{name}", response_model=kserve.ModelMetadata, responses=missing)
    async def v2_model(name: str) -> kserve.ModelMetadata:
        """V2 model metadata: the input ``text`` (BYTES) and the outputs."""
        kserve.check_model(app_name, name)
        return kserve.model_metadata(name, (await service.student.info())["version"])

    @router.post("/models/{name}/infer", responses={**missing, **ERRORS, **BODY_ERRORS})
    async def v2_infer(name: str, request: Request) -> Response:
        """V2 inference: a BYTES tensor of texts through the same cascade as /v1/classify."""
        kserve.check_model(app_name, name)
        check_content_type(request, also=("application/octet-stream",))  # the binary tensor data extension
        call = kserve.parse_infer(await request.body(), request.headers.get(kserve.HEADER_LENGTH))
        return kserve.infer_response(name, call, await service.classify(call.texts, call.options))

    return router


def _require(token: BearerToken) -> Callable[[str | None], None]:
    """A dependency that lets a request through only with ``token`` (checked before its body)."""

    def require(authorization: Authorization = None) -> None:
        refusal = token.refusal(authorization)
        if refusal is not None:
            status, message = refusal
            raise HTTPException(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    return require


def _feedback_router(service: CascadeService, token: BearerToken) -> APIRouter:
    router = APIRouter(dependencies=[Depends(_require(token))])

    @router.post("/v1/feedback", response_model=FeedbackResponse,
                 responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 400, 413, 415, 422)})
    async def feedback(request: Request) -> FeedbackResponse:
        """The true labels of earlier answers (needs ``$CASCADE_FEEDBACK_TOKEN``): they become
        live accuracy by tier (``/v1/stats``) and hard labels for the next refresh. A repeat is a
        no-op; a changed label replaces the earlier one, which the log keeps."""
        return await service.feedback((await _read(FeedbackRequest, request)).items)

    return router


def _admin_router(service: CascadeService, token: BearerToken) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", dependencies=[Depends(_require(token))], responses=ADMIN_ERRORS)

    @router.post("/promote", response_model=admin.PointerResponse)
    async def admin_promote(request: Request) -> admin.PointerResponse:
        """Point a role at a registered version; model servers swap to it within poll_registry_s (or at reload)."""
        return await service.move_pointer(admin.promote, await _read(admin.PromoteRequest, request))

    @router.post("/rollback", response_model=admin.PointerResponse)
    async def admin_rollback(request: Request) -> admin.PointerResponse:
        """Move a role's pointer back to its previous version."""
        return await service.move_pointer(admin.rollback, await _read(admin.RollbackRequest, request))

    @router.post("/threshold", response_model=admin.ThresholdResponse)
    async def admin_threshold(request: Request) -> admin.ThresholdResponse:
        """Set every ingress replica's escalation threshold (null: the configured, else the fitted one); kept across restarts."""
        return await service.set_threshold((await _read(admin.ThresholdRequest, request)).threshold)

    @router.post("/shadow")
    async def admin_shadow(request: Request) -> dict:
        """Judge a registered student in shadow on live traffic beside the serving one; the live
        evidence promotes or rejects it (see /v1/models' shadow). null stops the running shadow."""
        return await service.set_shadow((await _read(admin.ShadowRequest, request)).version)

    @router.post("/reload", response_model=admin.ReloadResponse)
    async def admin_reload(request: Request) -> admin.ReloadResponse:
        """Make the model servers re-read the registry's current pointers now, not at their next poll
        (no body, or ``{}``)."""
        await _read(NoBody, request, optional=True)
        return await service.reload()

    return router
