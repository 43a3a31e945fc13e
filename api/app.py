"""create_app(settings): the pool's lifespan, routes, authentication, error handlers, CORS, OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, Response, Router, get
from litestar.config.cors import CORSConfig
from litestar.datastructures import State

from . import __version__, routes
from .admission import AdmissionGate
from .asgi import ASGIApp
from .auth import Caller, Verifier, bind_caller
from .config import Settings
from .db import STATE_KEY as DB_STATE_KEY
from .db import Database, current_database
from .errors import EXCEPTION_HANDLERS, ErrorBody, Forbidden, ServiceUnavailable, UnsupportedMediaType, respond
from .head import HeadAsGet
from .jwks import JwksKeys
from .limits import MAX_BODY_BYTES, RequestLimits
from .logs import RequestLog
from .metrics import SAMPLE_INTERVAL_S, Metrics
from .openapi import finish_document, not_ready_response, openapi_config
from .pipeline import Statement
from .posture import PostureGuard

log = logging.getLogger("taskapi")


def create_app(settings: Settings) -> RequestLog:
    """The ASGI application for these settings; no global state."""
    metrics = Metrics() if settings.metrics_port is not None else None
    jwks = None
    if settings.jwt_jwks_url:
        jwks = JwksKeys(settings.jwt_jwks_url, ttl_s=settings.jwt_jwks_ttl_s,
                        on_fetch=metrics.count_jwks_fetch if metrics else None)
    db = Database(settings)
    posture = PostureGuard(settings.posture_check_s)
    verifier = Verifier(settings, jwks)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await db.open()  # raises RoleUnfit: a role that could bypass RLS never serves
        await posture.check(db)  # before the first request: a broken posture never serves at all
        guard = asyncio.create_task(posture.run(db), name="taskapi-posture-guard")
        lag = asyncio.create_task(db.admission.watch_loop(), name="taskapi-loop-lag")
        sampler = None
        if metrics is not None:
            sampler = asyncio.create_task(_sample_metrics(metrics, db, posture), name="taskapi-metrics-sampler")
        try:
            if jwks is not None:
                await jwks.start()  # an unreachable JWKS is logged, not fatal: the frontend may start later
            yield
        finally:
            for task in (guard, lag, sampler):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if jwks is not None:
                await jwks.close()
            await db.close()

    authenticate = request_gate(posture, verifier)
    api = Router(path="/api", route_handlers=routes.HANDLERS, before_request=authenticate,
                 security=[{"BearerToken": []}], tags=["tasks"])
    compat = Router(path="/api/{user_id:str}", route_handlers=routes.compat_handlers(),
                    before_request=authenticate, security=[{"BearerToken": []}], tags=["tasks (by user id)"])
    cors = None
    if settings.cors_origins:
        # Exactly the headers this API reads and sends (CONTRACT.md section 5): a browser script may send
        # the conditional and retry headers, and read the validators, the new task's address, the
        # request id, when to retry, and the next page.
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Match", "Idempotency-Key",
                           "X-Request-ID"],
            expose_headers=["ETag", "Location", "X-Request-ID", "Retry-After", "Link"],
            max_age=600,
        )
    app = Litestar(
        route_handlers=[health, ready, api, compat],
        lifespan=[lifespan],
        state=State({DB_STATE_KEY: db, POSTURE_STATE_KEY: posture}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]  # handlers narrower than Exception
        cors_config=cors,
        openapi_config=openapi_config(__version__),
        request_max_body_size=MAX_BODY_BYTES,  # RequestLimits checks first; this is a second guard
        logging_config=None,
        debug=False,
    )
    finish_document(app)  # the served OpenAPI document, complete (api/document.py), or no start at all
    # RequestLog outermost, so even a request refused by admission or RequestLimits has its id and its
    # log line; admission before anything reads the request, so refusing one costs next to nothing;
    # HeadAsGet innermost, so that everything else sees the method the client sent.
    # Litestar's __call__ is typed with its own TypedDict scopes; at the ASGI boundary both are plain dicts.
    inner = cast(ASGIApp, app)
    gate = AdmissionGate(RequestLimits(HeadAsGet(inner), body_timeout_s=settings.http_read_timeout_s),
                         db.admission, on_shed=metrics.count_shed if metrics else None)
    return RequestLog(gate, observe=metrics.observe if metrics else None)


async def _sample_metrics(metrics: Metrics, db: Database, posture: PostureGuard) -> None:
    """Copy the pool's, admission's and the posture guard's state into the worker's gauges, every second."""
    while True:
        now = time.monotonic()
        metrics.sample(pool=db.pool.get_stats(), waiting=db.admission.waiting, limit=db.admission.limit(now),
                       rate=db.admission.rate(now), lag_s=db.admission.lag_s, posture_failing=len(posture.failing))
        await asyncio.sleep(SAMPLE_INTERVAL_S)


def request_gate(posture: PostureGuard, verifier: Verifier) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """The before_request of every /api route: posture, token → caller, then the checks that need no data.

    Order: 503 (the database's isolation posture is broken: api/posture.py) before 401 (who are you)
    before 403 (the `{user_id}` of a compatibility path is not you) before 415 (the body is not JSON);
    query parameters and the body are parsed after it, so an unauthenticated request learns nothing
    about what a valid one looks like.
    """

    async def authenticate(request: Request[Any, Any, Any]) -> None:
        if posture.closed:
            raise ServiceUnavailable("the database's row-level security posture is broken; closed until it is fixed",
                                     retry_after=posture.retry_after)
        caller = Caller(await verifier.user_id(request.headers.get("authorization")))
        path_user = request.path_params.get("user_id")
        if path_user is not None and path_user != caller.id:
            raise Forbidden("the user id in the path is not the token's")
        if request.route_handler.opt.get("json_body"):
            _require_json(request)
        bind_caller(request.scope, caller)

    return authenticate


def _require_json(request: Request[Any, Any, Any]) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
            return  # no body at all: the body parser answers 400 "body required"
        raise UnsupportedMediaType("the body must be application/json")
    media_type, _, params = content_type.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise UnsupportedMediaType("the body must be application/json (UTF-8)")


# /ready: reachable and migrated (up to the audit schema, which the posture guard needs).
CHECK_READY = Statement(
    "SELECT pg_catalog.to_regclass('taskapi.tasks') IS NOT NULL"
    " AND pg_catalog.to_regprocedure('taskapi_audit.findings()') IS NOT NULL")


POSTURE_STATE_KEY = "posture"


class Status(msgspec.Struct):
    status: str


@get("/health", summary="The process is alive", tags=["operations"], include_in_schema=True)
async def health() -> Status:
    return Status("ok")


@get("/ready", summary="Database reachable, schema migrated, row-level security posture sound",
     tags=["operations"], responses={503: not_ready_response()})
async def ready(request: Request[Any, Any, Any]) -> Response[Status] | Response[ErrorBody]:
    posture = request.app.state[POSTURE_STATE_KEY]
    assert isinstance(posture, PostureGuard)
    try:
        row = await current_database(request).fetch_one(None, CHECK_READY, {})
    except ServiceUnavailable:
        row = None
    if row != (b"t",):
        return respond(503, "service_unavailable", "the database is unreachable or not migrated",
                       headers={"Retry-After": "1"})
    if posture.closed:
        return respond(503, "service_unavailable",
                       "the database's row-level security posture is broken: see SELECT * FROM "
                       "taskapi_audit.findings()", headers={"Retry-After": posture.retry_after},
                       checks=list(posture.failing))
    return Response(Status("ready"))
