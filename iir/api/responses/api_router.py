"""``/v1/responses``: OpenAI's Responses API, on every chat model (translated) and natively on
OpenAI's own models.

``POST`` runs a response (streamed as typed events or not) and stores it unless ``store`` is
false; ``previous_response_id`` continues a stored conversation of the same key (its earlier
turns go before ``input``); ``background: true`` runs it as a durable job, pollable with
``GET`` and cancellable with ``POST .../cancel``. ``GET``, ``DELETE`` and ``.../input_items`` read
the stored response; another key's ids answer 404.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict

from iir.api.http import (
    SSE_HEADERS,
    Request,
    Response,
    StreamResponse,
    json_response,
    while_connected,
)
from iir.api.responses import serving
from iir.api.responses.protocol import ResponsesRequest, as_history, as_items, listed
from iir.api.router import Route
from iir.core.errors import ApiError, bad_request
from iir.core.ids import now
from iir.store.responses import StoredResponse, new_response_id

if TYPE_CHECKING:
    from iir.api.services import Services

RESPONSE = "/v1/responses/{response_id}"
ACTIVE = ("queued", "in_progress")
_JOB_STATUS = {"pending": "queued", "running": "in_progress", "cancelled": "cancelled"}


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponseObject(_Doc):
    """The ``response`` object (OpenAI's schema ``Response``)."""

    id: str
    object: str
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None


class ResponseEvent(_Doc):
    """One typed event of a stream (``event: <type>`` then ``data: {...}``)."""

    type: str
    sequence_number: int


class InputItemList(_Doc):
    object: str
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Deleted(_Doc):
    id: str
    object: str
    deleted: bool


async def current(svc: Services, owner: str, stored: StoredResponse) -> dict[str, Any]:
    """The stored response as it is now: a background one reads its job's state, and keeps the
    outcome once the job has ended."""
    obj = stored.response
    if stored.job_id is None or stored.status not in ACTIVE:
        return obj
    try:
        job = await svc.job_pool.get(owner, stored.job_id)
    except ApiError as err:
        if err.status != 404:
            raise
        job = None
    if job is not None and job.status in ("pending", "running"):
        return {**obj, "status": _JOB_STATUS[job.status]}
    if job is not None and job.status == "succeeded" and job.result is not None:
        obj = job.result
    elif job is not None and job.status == "cancelled":
        obj = {**obj, "status": "cancelled"}
    else:
        error = (job.error if job is not None else None) or {
            "message": "The background job is gone (expired before its result was read)"
        }
        status = 429 if error.get("code") == "rate_limit_exceeded" else 500
        obj = {
            **obj,
            "status": "failed",
            "error": serving.error_object(ApiError(status, str(error.get("message")))),
        }
    await svc.responses.update(stored.id, str(obj.get("status")), obj)
    return obj


async def _history(svc: Services, owner: str, body: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """The earlier turns ``previous_response_id`` points at, as input items."""
    prev_id = body.get("previous_response_id")
    if prev_id is None:
        return None, []
    if not isinstance(prev_id, str):
        raise bad_request(
            "Invalid value for 'previous_response_id': must be a string",
            param="previous_response_id",
        )
    stored = await svc.responses.get(owner, prev_id, param="previous_response_id")
    obj = await current(svc, owner, stored)
    if obj.get("status") in ACTIVE:
        raise bad_request(
            f"Previous response '{prev_id}' is still in progress; wait for it to end",
            param="previous_response_id",
        )
    items = [
        *stored.request.get("history", ()),
        *stored.request.get("input", ()),
        *(obj.get("output") or ()),
    ]
    return prev_id, [h for h in map(as_history, items) if h is not None]


async def create(svc: Services, req: Request) -> Response | StreamResponse:
    body = await req.json()
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", param="body")
    owner = req.key_id or ""
    prev_id, history = await _history(svc, owner, body)
    if history and isinstance(body.get("input"), str | list):
        body = {**body, "input": [*history, *as_items(body["input"])]}
    prepared = await serving.prepare(svc.pipeline, body, req.caller())
    chat = prepared.request
    req.state["model"] = chat.model
    req.reply_headers += prepared.headers
    assert prepared.native is not None
    scrubbed = prepared.native.body
    given = scrubbed["input"][len(history) :] if history else scrubbed["input"]
    stored_request = {
        "history": scrubbed["input"][: len(history)],
        "input": [listed(item) for item in as_items(given)],
    }
    store = scrubbed.get("store", True) is not False
    turn = serving.Turn(new_response_id(), now(), chat.model, scrubbed, prev_id)
    decision = prepared.decision

    if scrubbed.get("background") is True:
        return await _background(svc, req, prepared, turn, stored_request, store)

    async def save(obj: dict[str, Any]) -> None:
        await svc.responses.save(owner, turn.id, turn.model, obj["status"], stored_request, obj)

    if chat.stream:
        stream = await while_connected(req, svc.pipeline.stream(prepared))
        turn.model = stream.model
        headers = list(SSE_HEADERS)
        if decision is not None:
            headers += decision.headers(stream.model)
        return StreamResponse(serving.sse(turn, stream, save if store else None), headers=headers)
    answer = await while_connected(req, svc.pipeline.run(prepared))
    turn.model = answer.model
    obj = serving.answer_object(turn, answer)
    if store:
        await save(obj)
    return json_response(obj, headers=decision.headers(answer.model) if decision else [])


async def _background(
    svc: Services,
    req: Request,
    prepared: Any,
    turn: serving.Turn,
    stored_request: dict[str, Any],
    store: bool,
) -> Response:
    """A response run as a durable job: stored ``queued`` at once, its outcome read at ``GET``."""
    owner = req.key_id or ""
    refusal = None
    if not store:
        refusal = bad_request("A background response must be stored; drop 'store: false'", "store")
    elif prepared.request.stream:
        refusal = bad_request(
            "A background response is not streamed; drop 'stream' and poll GET /v1/responses/{id}",
            param="stream",
        )
    if refusal is not None:
        if prepared.reservation is not None:
            prepared.reservation.settle(0)
        raise refusal
    turn.background = True
    job = {
        "body": turn.body,
        "response_id": turn.id,
        "created_at": turn.created_at,
        "previous_response_id": turn.previous_response_id,
    }
    job_id = await svc.jobs.enqueue(req, "responses", prepared, job)
    obj = serving.response_object(turn, "queued", [])
    try:
        await svc.responses.save(owner, turn.id, turn.model, "queued", stored_request, obj, job_id)
    except BaseException:
        with suppress(Exception):
            await svc.job_pool.cancel(owner, job_id)
        raise
    return json_response(obj)


async def retrieve(svc: Services, req: Request, response_id: str) -> Response:
    owner = req.key_id or ""
    stored = await svc.responses.get(owner, response_id)
    req.state["model"] = stored.model
    return json_response(await current(svc, owner, stored))


async def delete(svc: Services, req: Request, response_id: str) -> Response:
    owner = req.key_id or ""
    stored = await svc.responses.delete(owner, response_id)
    if stored.job_id is not None and stored.status in ACTIVE:
        with suppress(ApiError):
            await svc.job_pool.cancel(owner, stored.job_id)
    return json_response({"id": stored.id, "object": "response.deleted", "deleted": True})


async def cancel(svc: Services, req: Request, response_id: str) -> Response:
    owner = req.key_id or ""
    stored = await svc.responses.get(owner, response_id)
    if stored.job_id is None:
        raise bad_request("Only responses created with 'background': true can be cancelled")
    obj = await current(svc, owner, stored)
    if obj.get("status") in ACTIVE:
        before = await svc.job_pool.cancel(owner, stored.job_id)
        if before in ("succeeded", "failed"):  # it ended meanwhile: that outcome stands
            stored.status = "in_progress"
            return json_response(await current(svc, owner, stored))
        obj = {**obj, "status": "cancelled"}
        await svc.responses.update(stored.id, "cancelled", obj)
    return json_response(obj)


async def input_items(svc: Services, req: Request, response_id: str) -> Response:
    owner = req.key_id or ""
    stored = await svc.responses.get(owner, response_id)
    query = parse_qs(req.query or "")
    limit = _int(query, "limit", 20, 1, 100)
    order = (query.get("order") or ["desc"])[-1]
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'", param="order")
    items = list(stored.request.get("input", ()))
    if order == "desc":
        items.reverse()
    after = query["after"][-1] if query.get("after") else None
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be a whole number from {low} to {high}", param=name)
    return value


TAGS = ("responses",)
ROUTES = [
    Route(
        "POST",
        "/v1/responses",
        create,
        "Create a response (OpenAI Responses API), streamed or not, stored unless store is false",
        request=ResponsesRequest,
        response=ResponseObject,
        stream=ResponseEvent,
        tags=TAGS,
    ),
    Route("GET", RESPONSE, retrieve, "A stored response", response=ResponseObject, tags=TAGS),
    Route("DELETE", RESPONSE, delete, "Delete a stored response", response=Deleted, tags=TAGS),
    Route(
        "POST",
        RESPONSE + "/cancel",
        cancel,
        "Cancel a background response",
        response=ResponseObject,
        tags=TAGS,
    ),
    Route(
        "GET",
        RESPONSE + "/input_items",
        input_items,
        "The input items of a stored response",
        response=InputItemList,
        tags=TAGS,
    ),
]
