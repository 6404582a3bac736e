"""The coordinator service's state, through SQLAlchemy 2: accounts, promotions and their approvals,
training jobs, and the audit chain with its anchors. An SQLite file by default, PostgreSQL by URL
(``FENJI_COORDINATOR_DB=postgresql+psycopg://…``); the tables are created on first use.

Every state change happens in one transaction with its audit entry (``coordinator.service.chain``).
On SQLite every transaction starts with ``BEGIN IMMEDIATE``: writers queue for the file's lock up
front, instead of two of them reading the same audit head and one failing at its first write.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    sessionmaker,
)

from federation.errors import SettingsError

__all__ = ["Account", "Approval", "AuditAnchor", "AuditHead", "AuditRow", "Base", "EngineRun", "Job", "Promotion",
           "QueryJob", "QueryLeftOut", "Site", "open_database"]


class Base(DeclarativeBase):
    pass


class Account(Base):
    """Someone who may call the API: a role, and the SHA-256 of a bearer token shown once."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(40))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[str] = mapped_column(String(40))
    revoked_at: Mapped[str | None] = mapped_column(String(40), default=None)


class Promotion(Base):
    """A request that a version serve under an alias: ``pending`` with one approval, ``applied`` when
    a second commissioner approved (or, for a rollback, at once), ``superseded`` when another version
    was applied meanwhile."""

    __tablename__ = "promotions"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # promotion | rollback
    task: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(20))
    alias: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[str] = mapped_column(String(40))
    applied_at: Mapped[str | None] = mapped_column(String(40), default=None)
    previous_version: Mapped[str | None] = mapped_column(String(20), default=None)
    bundle_sha256: Mapped[str] = mapped_column(String(64), default="")


class Approval(Base):
    """One commissioner's signature on a promotion, with the reason given."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("promotion_id", "account_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    promotion_id: Mapped[int] = mapped_column(ForeignKey("promotions.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[str] = mapped_column(String(40))


class Job(Base):
    """A training job (``coordinator.service.jobs``): what was asked, its state, its progress and
    per-round metrics, and how it ended (JSON columns: the same text on SQLite and PostgreSQL)."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    rounds: Mapped[int]
    dp_epsilon: Mapped[float | None] = mapped_column(default=None)
    personalisation: Mapped[bool] = mapped_column(default=True)
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued | running | succeeded | failed | cancelled
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[str | None] = mapped_column(String(40), default=None)
    finished_at: Mapped[str | None] = mapped_column(String(40), default=None)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(200), default=None)
    rounds_done: Mapped[int] = mapped_column(default=0)
    history_json: Mapped[str] = mapped_column(Text, default="[]")  # one metrics dict per finished round
    result_json: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(String(100), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    sites_json: Mapped[str] = mapped_column(Text, default="[]")  # sites that refused or failed, and why
    # Loaded with the job (a separate SELECT, so a job read FOR UPDATE locks no outer join on PostgreSQL).
    engine_run: Mapped[EngineRun | None] = relationship(lazy="selectin", uselist=False)


class EngineRun(Base):
    """The engine's own id of a job's run (Flower's run id on the deployment engine), stored as soon as
    the engine reports it: a coordinator that restarts mid-job stops that run instead of leaving it
    going. A table of its own for the reason ``QueryJob`` has one; text, as Flower's run ids are
    unsigned 64-bit and PostgreSQL's BIGINT is signed."""

    __tablename__ = "job_engine_runs"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    engine: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[str] = mapped_column(String(40))


class QueryJob(Base):
    """A federated-statistics query (``coordinator.service.queries``): its typed query as canonical JSON,
    its state and its result. A table of its own, not columns on ``jobs``: ``create_all`` adds a missing
    table to an existing database, but never a missing column."""

    __tablename__ = "query_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    query_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued | running | succeeded | failed
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[str | None] = mapped_column(String(40), default=None)
    finished_at: Mapped[str | None] = mapped_column(String(40), default=None)
    result_json: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(String(100), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Loaded with the query (a separate SELECT, as ``Job.engine_run``); None unless it failed naming sites.
    left_out: Mapped[QueryLeftOut | None] = relationship(lazy="selectin", uselist=False)


class QueryLeftOut(Base):
    """The sites a failed query left out, and why (``Job.sites_json``'s ``{"site", "reason", "phase"}``
    dicts). A table of its own for the reason ``QueryJob`` has one: a database made before it gains
    it on its next start."""

    __tablename__ = "query_left_out"
    query_id: Mapped[int] = mapped_column(ForeignKey("query_jobs.id"), primary_key=True)
    sites_json: Mapped[str] = mapped_column(Text, default="[]")


class Site(Base):
    """A clinic as the coordinator knows it (``coordinator.service.sites``): since when, when it last
    replied, and the latest report it sent (its numbers as JSON, as the node's egress guard let them out)."""

    __tablename__ = "sites"
    site_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    enrolled_at: Mapped[str] = mapped_column(String(40))
    last_seen_at: Mapped[str | None] = mapped_column(String(40), default=None)
    last_job_id: Mapped[int | None] = mapped_column(default=None)
    audit_head: Mapped[str] = mapped_column(String(64), default="")
    report_json: Mapped[str | None] = mapped_column(Text, default=None)
    report_at: Mapped[str | None] = mapped_column(String(40), default=None)
    report_task: Mapped[str | None] = mapped_column(String(100), default=None)
    report_job_id: Mapped[int | None] = mapped_column(default=None)


class AuditRow(Base):
    """One entry of the audit chain, stored as its JSON line (``federation.audit``'s rules)."""

    __tablename__ = "audit_entries"
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    line: Mapped[str] = mapped_column(Text)


class AuditHead(Base):
    """One row: the chain's head. Appending locks it first, so appends queue (PostgreSQL: ``FOR UPDATE``)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(default=0)


class AuditAnchor(Base):
    """A head of the chain the key holder countersigned (``federation.audit.Anchor``)."""

    __tablename__ = "audit_anchors"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int]
    head: Mapped[str] = mapped_column(String(64))
    caller: Mapped[str] = mapped_column(String(200))
    keyholder: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[str] = mapped_column(String(40))
    signature: Mapped[str] = mapped_column(String(200))


def _sqlite_immediate(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
        dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_database(url: str) -> sessionmaker:
    """A session factory over ``url``, its tables created if missing (a new SQLite file's folder too).

    Raises
    ------
    SettingsError
        If the URL is unusable or the database cannot be reached (naming FENJI_COORDINATOR_DB).
    """
    try:
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        sqlite = url.startswith("sqlite")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {},
                               pool_pre_ping=not sqlite)
        if sqlite:
            _sqlite_immediate(engine)
        Base.metadata.create_all(engine)
    except (SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        shown = engine_url_without_password(url)
        raise SettingsError(f"cannot open the coordinator's database {shown} (FENJI_COORDINATOR_DB): {exc}") from exc
    return sessionmaker(engine, expire_on_commit=False)


def engine_url_without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for a message
        return "(unparseable URL)"
