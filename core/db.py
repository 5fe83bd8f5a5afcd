"""The database handle, in plain SQLAlchemy: core's own, usable with or without Flask.

``Model`` is the declarative base of every table. Constraint names follow one
convention (``NAMING``) so Alembic's autogenerate and batch mode name them the
same on every database.

``db.session`` is a scoped session. By default each thread has its own; a
process may install a scope of its own (``db.install_scope``): the web app's
composition root (``service``) gives each Flask app context its session and
its app's engine, as Flask-SQLAlchemy did. Whoever opens a unit of work ends
it with ``db.remove()``: the web app when an app context tears down, the
worker after each job; a process without Flask (SMTP submission) configures
the engine (``db.configure(url)``) and does the same around its own work.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar

from sqlalchemy import CursorResult, Engine, MetaData, Result, Table, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import ScopedRegistry, ThreadLocalRegistry

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Model(DeclarativeBase):
    """The declarative base of every table."""

    metadata = MetaData(naming_convention=NAMING)
    #: every model here maps one Table (DeclarativeBase types it as any FromClause)
    __table__: ClassVar[Table]


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE, DELETE or INSERT run through ``db.session.execute`` matched: the
    session returns a ``CursorResult`` for them, but its signature says only ``Result``."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"no row count: {type(result).__name__} is not a CursorResult")
    return result.rowcount


def engine_options(url: str) -> dict:
    """The engine options every process uses for ``url``: SQLite waits on a locked database
    (an in-memory one is one connection shared by every thread); other databases keep a
    small pool whose connections are checked before use."""
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}


class _Registry:
    """The scoped session's registry: one session per key of the installed scope
    function while it returns one, else one per thread (thread-local: it ends with
    its thread)."""

    def __init__(self, createfunc: Callable[[], Session]):
        self.scopefunc: Callable[[], Hashable | None] | None = None
        self._scoped = ScopedRegistry(createfunc, self._key)
        self._local = ThreadLocalRegistry(createfunc)

    def _key(self) -> Hashable | None:
        return self.scopefunc() if self.scopefunc is not None else None

    def _current(self) -> ScopedRegistry | ThreadLocalRegistry:
        return self._local if self._key() is None else self._scoped

    def __call__(self) -> Session:
        return self._current()()

    def has(self) -> bool:
        return self._current().has()

    def set(self, obj: Session) -> None:
        self._current().set(obj)

    def clear(self) -> None:
        self._current().clear()


class _ScopedSession(scoped_session):
    """``scoped_session`` over ``_Registry``."""

    def __init__(self, session_factory: sessionmaker, registry: _Registry):
        self.session_factory = session_factory
        # _Registry is ScopedRegistry's interface (call, has, set, clear), not its subclass
        self.registry = registry  # type: ignore[assignment]


class Database:
    """``session``, ``engine``, ``metadata`` and ``Model``; ``configure`` binds it to a database."""

    Model = Model
    metadata = Model.metadata

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._scope_engine: Callable[[], Engine | None] | None = None
        self._registry = _Registry(self._new_session)
        self.session = _ScopedSession(sessionmaker(), self._registry)

    def configure(self, url: str, **options) -> Engine:
        """Create the engine of ``url`` (``engine_options``, overridden by ``options``); it is the
        engine of every session but those of an installed scope that names its own."""
        self._engine = create_engine(url, **{**engine_options(url), **options})
        return self._engine

    def install_scope(self, scopefunc: Callable[[], Hashable | None],
                      engine: Callable[[], Engine | None] | None = None) -> None:
        """Give each key of ``scopefunc`` its own session (``None``: no scope now, the thread's
        session), bound to ``engine()`` when that names one, else to the configured engine."""
        self._registry.scopefunc = scopefunc
        self._scope_engine = engine

    @property
    def engine(self) -> Engine:
        engine = self._scope_engine() if self._scope_engine is not None else None
        engine = engine or self._engine
        if engine is None:
            raise RuntimeError("no database: call core.db.db.configure(url) first")
        return engine

    def remove(self) -> None:
        """End the current scope's session (rolled back if a transaction is open)."""
        self.session.remove()

    def _new_session(self) -> Session:
        return self.session.session_factory(bind=self.engine)


db = Database()
