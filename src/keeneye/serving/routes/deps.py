"""Dependencies shared by the routers: app state, results DB, object store, access, rate limit,
in-flight bound.

Access: every route declares what it needs with one :class:`AccessRule` — ``require(Role.…)``
(``ViewerDep`` / ``OperatorDep`` / ``AdminDep``, or ``dependencies=[VIEWER]`` on a router) or
:data:`PUBLIC_ROUTE` (probes, metrics, static docs, the login page); a test
(``tests/unit/serving/test_access.py``) walks the app's routes so none can forget. Who asks is an
:class:`Actor`: the API key sent as ``X-API-Key`` / ``Authorization: Bearer``, or the key the login
page stored in the :data:`KEY_COOKIE` cookie. When keys are not required (a loopback server without
``serving.require_api_key``) a request without a valid key is :data:`LOCAL`, an admin: a laptop
works as it always did. Otherwise no key → 401, a weaker role → 403 naming the role needed. A
mutating request authenticated by the cookie must also carry :data:`CSRF_HEADER` equal to the
:data:`CSRF_COOKIE` cookie (double submit), so another site cannot act with the browser's cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from keeneye.domain import Role
from keeneye.serving.limits import ConcurrencyCap, Refused
from keeneye.serving.state import AppState
from keeneye.store import ObjectStore, ResultsDB


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.keeneye
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_db(state: StateDep) -> ResultsDB:
    return state.db


def get_objects(state: StateDep) -> ObjectStore:
    return state.objects


DbDep = Annotated[ResultsDB, Depends(get_db)]
ObjectsDep = Annotated[ObjectStore, Depends(get_objects)]


def api_key_of(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


KEY_COOKIE = "keeneye_key"
CSRF_COOKIE = "keeneye_csrf"
CSRF_HEADER = "X-Keeneye-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_REQUIRED = (
    "an API key is required: send it as 'X-API-Key: <key>' (create one: keeneye keys create), "
    "or log in at /login"
)


@dataclass(frozen=True)
class Actor:
    """Who a request acts as: an API key (its id, name and role), or :data:`LOCAL`."""

    name: str
    role: Role
    key_id: int | None = None


LOCAL = Actor("local", Role.admin)  # loopback without required keys: the person at the machine


def _csrf_ok(request: Request) -> bool:
    sent, expected = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
    return bool(expected) and secrets.compare_digest(sent.encode(), expected.encode())


def authenticate(request: Request, state: StateDep) -> Actor | None:
    """The request's :class:`Actor`, or ``None`` when keys are required and none was sent.

    An unknown or revoked key is a 401 when keys are required; on a server without required keys it
    is ignored (the request is :data:`LOCAL`), as before roles existed. The actor is also left on
    ``request.state.actor`` for the page templates (the nav names who is logged in).
    """
    key, from_cookie = api_key_of(request), False
    if key is None:
        key = request.cookies.get(KEY_COOKIE) or None
        from_cookie = key is not None
    actor: Actor | None = None if state.require_api_key else LOCAL
    if key is not None:
        found = state.db.find_api_key(key)
        if found is not None:
            actor = Actor(found.name, found.role, found.id)
            if from_cookie and request.method not in SAFE_METHODS and not _csrf_ok(request):
                raise HTTPException(
                    403,
                    detail=f"a request signed in by cookie must send the {CSRF_HEADER} header "
                    f"(the value of the {CSRF_COOKIE} cookie)",
                )
        elif state.require_api_key:
            raise HTTPException(401, detail="unknown or revoked API key")
    request.state.actor = actor
    return actor


async def current_actor(request: Request, state: StateDep) -> Actor | None:
    """:func:`authenticate` as a dependency: the database is asked (off the event loop) only when
    the request carries a key."""
    if api_key_of(request) is None and not request.cookies.get(KEY_COOKIE):
        actor = None if state.require_api_key else LOCAL
        request.state.actor = actor
        return actor
    return await asyncio.to_thread(authenticate, request, state)


AuthDep = Annotated[Actor | None, Depends(current_actor)]


class AccessRule:
    """What a route needs; every route depends on exactly one (see the module docstring)."""

    role: Role | None = None


class RoleRequired(AccessRule):
    """Dependency: the request's actor when its role allows :attr:`role`; 401 / 403 otherwise."""

    def __init__(self, role: Role) -> None:
        self.role = self.needed = role

    async def __call__(self, actor: AuthDep) -> Actor:
        if actor is None:
            raise HTTPException(401, detail=KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"})
        ensure_role(actor, self.needed)
        return actor

    def __repr__(self) -> str:
        return f"require(Role.{self.needed})"


class PublicRoute(AccessRule):
    """Dependency of the routes anyone may call: probes, metrics, static docs, the login page."""

    async def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return "public"


@cache
def require(role: Role) -> RoleRequired:
    """The dependency of a route that needs ``role`` (one instance per role: FastAPI runs it once)."""
    return RoleRequired(role)


def ensure_role(actor: Actor, needed: Role, what: str | None = None) -> None:
    """403 unless ``actor`` may do what ``needed`` guards; the detail names the role needed."""
    if not actor.role.allows(needed):
        doing = f"{what} needs" if what else "this needs"
        raise HTTPException(
            403,
            detail=f"{doing} the {needed.value} role; the key {actor.name!r} has the "
            f"{actor.role.value} role (ask an admin for a key: keeneye keys create NAME "
            f"--role {needed.value})",
        )


def audit_name(actor: Actor, given: str | None = None) -> str:
    """Who did it, for the audit columns (acked_by, author, model_events.actor).

    A key's name always (a name the request gave goes in front: ``"ana (key field-app)"``); on a
    server without required keys, the name given or ``"local"``.
    """
    given = (given or "").strip()
    if actor.key_id is None:
        return given or actor.name
    return f"{given} (key {actor.name})" if given and given != actor.name else actor.name


# For a router (or a decorator) whose routes need a role but not the actor: dependencies=[VIEWER].
PUBLIC_ROUTE = Depends(PublicRoute())
VIEWER = Depends(require(Role.viewer))
OPERATOR = Depends(require(Role.operator))
ADMIN = Depends(require(Role.admin))
# For a route that uses the actor (the audit): ``actor: OperatorDep``.
ViewerDep = Annotated[Actor, VIEWER]
OperatorDep = Annotated[Actor, OPERATOR]
AdminDep = Annotated[Actor, ADMIN]


@dataclass(frozen=True)
class Client:
    """Who a request counts against in the flood guard (serving/limits.py)."""

    address: str  # the peer address (behind a proxy: what uvicorn's --forwarded-allow-ips trusts)
    key_id: int | None  # the API key's id when the request carries a valid one
    rate_key: str  # the rate limit's identity: the key when keys are required, else the address


async def client_identity(request: Request, state: StateDep, actor: AuthDep) -> Client:
    """The request's :class:`Client`: the rate limit counts against the API key when keys are
    required, else the client address; the concurrency caps count against both.

    Refuses with 401 when keys are required and the request has no valid one.
    """
    address = request.client.host if request.client else "unknown"
    key_id = actor.key_id if actor is not None else None
    if state.require_api_key:
        if key_id is None:
            raise HTTPException(401, detail=KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"})
        return Client(address, key_id, f"key:{key_id}")
    return Client(address, key_id, f"addr:{address}")


ClientDep = Annotated[Client, Depends(client_identity)]

_WAIT_FIX = "wait for answers before sending more (honour Retry-After)"
_ENV = "KEENEYE_SERVING__"


def _too_many_in_flight(who: str, limit: int, setting: str) -> Refused:
    return Refused(
        429,
        "too_many_in_flight",
        f"{who} already has {limit} requests in flight, the most allowed",
        retry_after=1,
        fix=f"{_WAIT_FIX}, or raise {_ENV}{setting} (divided among `serve --workers` processes)",
    )


def _counted(state: AppState, pipeline: str, refusal: Refused) -> Refused:
    state.metrics.requests.labels(pipeline, str(refusal.status)).inc()
    return refusal


def _hold(held: contextlib.ExitStack, cap: ConcurrencyCap, key: str) -> bool:
    """Take one of ``key``'s slots until ``held`` closes; False when they are all taken."""
    if not cap.try_enter(key):
        return False
    held.callback(cap.leave, key)
    return True


@contextmanager
def admitted(state: AppState, pipeline: str, client: Client) -> Iterator[None]:
    """The flood guard for one request of one pipeline (serving/limits.py): the rate limit, the
    concurrency caps per client address and per API key (429), then the pipeline's in-flight bound
    (503), each refusal with its ``reason`` and Retry-After; every slot taken is given back.

    Routes whose pipeline is in the path use :func:`admit` (a dependency); routes that learn the
    pipeline later (feedback: from the observation) enter this directly.
    """
    rate, inflight = state.rate.get(pipeline), state.inflight.get(pipeline)
    if rate is None or inflight is None:
        state.catalog.get(pipeline)  # raises NotFound with the known names
        raise AssertionError("every catalogued pipeline has limiters")
    wait = rate.acquire(client.rate_key)
    if wait > 0:
        fix = f"{_WAIT_FIX}, or raise the pipeline's limits.rate_per_second and burst"
        message = f"rate limit exceeded for this client on {pipeline}"
        raise _counted(state, pipeline, Refused(429, "rate_limited", message, retry_after=wait, fix=fix))
    with contextlib.ExitStack() as held:
        if not _hold(held, state.per_client, f"addr:{client.address}"):
            who = f"client {client.address}"
            raise _counted(
                state, pipeline, _too_many_in_flight(who, state.per_client.limit, "MAX_INFLIGHT_PER_CLIENT")
            )
        if client.key_id is not None and not _hold(held, state.per_key, f"key:{client.key_id}"):
            who = f"API key #{client.key_id}"
            raise _counted(
                state, pipeline, _too_many_in_flight(who, state.per_key.limit, "MAX_INFLIGHT_PER_KEY")
            )
        if not inflight.try_enter():
            fix = f"retry after Retry-After, add API replicas, or raise {_ENV}MAX_INFLIGHT"
            message = f"server busy: {inflight.limit} requests of {pipeline} in flight"
            raise _counted(state, pipeline, Refused(503, "busy", message, retry_after=1, fix=fix))
        held.callback(inflight.leave)
        state.metrics.inflight.inc()
        held.callback(state.metrics.inflight.dec)
        yield


async def admit(request: Request, state: StateDep, client: ClientDep) -> AsyncIterator[Client]:
    """Dependency form of :func:`admitted` for routes with the pipeline in the path (``{name}``)."""
    pipeline = request.path_params.get("name", state.settings.serving.default_pipeline)
    with admitted(state, pipeline, client):
        yield client


AdmitDep = Annotated[Client, Depends(admit)]
