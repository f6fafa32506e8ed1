"""Whose smartcut requests a caller makes and sees (docs/smartcut.md → "Users and API keys").

A request signed with an API key acts for the user the key names: the key's name *is* the smartcut
user (``keeneye keys create alice`` → requests of ``alice``). Such a caller may leave ``user_id`` out;
another ``user_id`` is refused (403 ``other_user``) unless the key is an admin's, which may act for
and read any user. Lists and reads by uid show a non-admin key only its own requests; another user's
request answers 404 exactly like an unknown one. Without a key (a loopback server without
``serving.require_api_key``: the person at the machine) ``user_id`` is taken as given, as before keys
existed. The per-user limits (requests in flight, active users) count the user chosen here.
"""

from __future__ import annotations

from keeneye.domain import InvalidInput, NotFound, Role
from keeneye.serving.routes.deps import Actor
from keeneye.store import ResultsDB
from keeneye.store.smartcut import SmartcutRequestRecord

OTHER_USER = "other_user"


def _given(user_id: str | None) -> str | None:
    return (user_id or "").strip() or None


def bound_user(actor: Actor) -> str | None:
    """The user a caller is held to: its key's name, unless the key is an admin's (or there is no key)."""
    if actor.key_id is None or actor.role.allows(Role.admin):
        return None
    return actor.name


def acting_user(actor: Actor, user_id: str | None) -> str:
    """The user a new request (or the studio's edits) belongs to: the key's name, or ``user_id``
    where the caller may name one. 403 ``other_user`` for a non-admin key naming someone else; 422
    when no key and no ``user_id`` name anyone."""
    given = _given(user_id)
    if actor.key_id is not None and (given is None or given == actor.name):
        return actor.name
    bound = bound_user(actor)
    if bound is not None:
        raise InvalidInput(
            OTHER_USER,
            f"the API key {actor.name!r} acts for user {bound!r}, not {given!r}",
            status=403,
            fix=f"leave user_id out (it is {bound!r}, the key's name), or use that user's own key "
            "(keeneye keys create NAME) or an admin key",
        )
    if given is None:
        raise InvalidInput(
            "bad_request",
            "form field 'user_id' is required (text): whose request this is",
            status=422,
            fix="send user_id, or sign the request with an API key (its name is the user)",
        )
    return given


def listed_user(actor: Actor, user_id: str | None) -> str | None:
    """Whose requests a list shows: one user (the key's, or ``user_id``), or ``None``: everyone's
    (an admin or the person at the machine without ``user_id``)."""
    if _given(user_id) is None and bound_user(actor) is None:
        return None
    return acting_user(actor, user_id)


def visible_request(
    db: ResultsDB, uid: str, actor: Actor, user_id: str | None = None
) -> SmartcutRequestRecord:
    """The request ``uid`` when the caller may see it (and it is ``user_id``'s, when given); 404 like
    an unknown request otherwise, so a key cannot learn which uids exist."""
    record = db.smartcut_request(uid)  # NotFound → 404
    wanted = acting_user(actor, user_id) if _given(user_id) is not None else bound_user(actor)
    if wanted is not None and record.user_id != wanted:
        raise NotFound(
            f"no smartcut request {uid!r} for user {wanted!r}",
            fix="list your requests: GET /v1/smartcut/requests",
        )
    return record


__all__ = ["OTHER_USER", "acting_user", "bound_user", "listed_user", "visible_request"]
