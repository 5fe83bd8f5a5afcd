"""The audit log: one call records who did what, to what, from where.

Who and from where come from the caller (``actor=``, ``user_id=``) or from the
context's ``Actor``, which the web side sets per request (``act_as``: the client's
address at the start, the signed-in user or the API token once known; see
``dashboard.auth`` and ``dashboard.api.base``). Outside a request the actor is
``system`` and there is no address.
"""
from __future__ import annotations

import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass

from core.db import db
from core.models import AuditLog


@dataclass(frozen=True)
class Actor:
    """Who acts in this context (a user's email and id, or an API token's name) and from which address."""

    name: str | None = None
    user_id: int | None = None
    ip: str | None = None


#: no one: the system, from no address
NOBODY = Actor()
_actor: ContextVar[Actor] = ContextVar("core.audit.actor", default=NOBODY)


def act_as(actor: Actor | None = None, **changes) -> Actor:
    """Set this context's actor: ``actor`` (default: none), with ``changes`` (``name``, ``user_id``, ``ip``)."""
    found = dataclasses.replace(actor or NOBODY, **changes)
    _actor.set(found)
    return found


def current_actor() -> Actor:
    return _actor.get()


def record(action: str, *, company_id: int | None = None, object_type: str | None = None,
           object_id=None, details: dict | None = None, actor: str | None = None,
           user_id: int | None = None) -> AuditLog:
    """Add an audit entry to the session (committed with the caller's change).

    ``details`` must hold names and counts only, never secret values.
    """
    who = _actor.get()
    if actor is None and who.name:  # the signed-in user, or the API token (no user)
        actor = who.name
        user_id = who.user_id if who.user_id is not None else user_id
    entry = AuditLog(action=action, company_id=company_id, object_type=object_type,
                     object_id=None if object_id is None else str(object_id), details=details or {},
                     actor=actor or "system", user_id=user_id, ip=who.ip)
    db.session.add(entry)
    return entry
