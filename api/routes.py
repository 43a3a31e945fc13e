"""Which handler answers which path and method: the /api routes and their /api/{user_id} twins."""

from __future__ import annotations

from typing import Any

from litestar import Response, patch, route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler

from . import listing, tasks


def _options(path: str, allow: str) -> HTTPRouteHandler:
    """OPTIONS for a path that several handlers share.

    Litestar's automatic OPTIONS handler answers with the methods of the route it was made for,
    which is the path's first handler only (`Allow: GET, OPTIONS` on /api/tasks); schemathesis found it.
    """

    @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, status_code=204)
    async def options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": allow})

    return options


def _shared_path_options() -> list[HTTPRouteHandler]:
    return [_options("/tasks", "DELETE, GET, OPTIONS, POST"),
            _options("/tasks/{task_id:str}", "DELETE, GET, OPTIONS, PATCH, PUT")]


# The OPTIONS handlers come first: registered after another handler, they lose to the automatic one.
HANDLERS: list[Any] = [*_shared_path_options(), listing.list_tasks, listing.clear_completed, listing.list_tags,
                       tasks.create_task, tasks.get_task, tasks.put_task, tasks.patch_task, tasks.toggle_task,
                       tasks.delete_task]


def compat_handlers() -> list[Any]:
    """The /api/{user_id}/... paths: same handlers; the gate (`app.request_gate`) checks {user_id} first.

    Toggle is spelled .../complete there (the convention those frontends use).
    """
    return [*_shared_path_options(), listing.list_tasks, listing.clear_completed, listing.list_tags,
            tasks.create_task, tasks.get_task, tasks.put_task, tasks.patch_task, tasks.delete_task,
            patch("/tasks/{task_id:str}/complete", summary=tasks.toggle_task.summary,
                  responses=tasks.toggle_task.responses,
                  response_headers=tasks.toggle_task.response_headers)(tasks.toggle_task.fn)]
