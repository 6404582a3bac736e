"""The city's coordinator as a service (``fenji coordinator serve``): accounts and roles, model
governance under four eyes, and an audit chain anchored at the key holder.

    app.py         create_app: the FastAPI app under /api/v1
    access.py      the role table (ACCESS), checked against the routes at start-up
    deps.py        Annotated dependencies: Caller, Db, CoordinatorDep
    db.py          SQLAlchemy models; SQLite by default, PostgreSQL by URL
    accounts.py    accounts and hashed tokens
    versions.py    registered versions with per-site metrics and the best-worst gap
    governance.py  four-eyes promotion, rollback
    tier_policies.py  tier-policy edits: a new version, audited (then approved as any version)
    jobs.py        training jobs: queue, worker thread, cancellation, restart; the runner is injected
    sites.py       the sites: enrolled, last seen, their latest reports (what each role sees of them)
    chain.py       the audit chain in the database, its anchors, verify
    anchoring.py   the key holder's anchor endpoint, over HTTP
    errors.py      errors -> HTTP statuses
"""

from coordinator.service.access import ACCESS, API_PREFIX, PUBLIC, Role
from coordinator.service.app import create_app
from coordinator.service.deps import Coordinator

__all__ = ["ACCESS", "API_PREFIX", "PUBLIC", "Coordinator", "Role", "create_app", "open_coordinator"]


def open_coordinator(settings: object | None = None, *, transport: object | None = None) -> Coordinator:
    """The service's parts from ``CoordinatorSettings`` (default: the environment's): its database
    (tables and audit head made), the registry at ``FENJI_HOME``, the key holder if one is set."""
    from coordinator.service.anchoring import AnchorClient
    from coordinator.service.chain import ensure_head
    from coordinator.service.db import open_database
    from coordinator.service.versions import ModelRegistry
    from coordinator.settings import load_coordinator_settings

    settings = settings or load_coordinator_settings()
    sessions = open_database(settings.database_url)
    ensure_head(sessions)
    anchors = (AnchorClient(settings.keyholder_url, settings.keyholder_token, transport=transport,
                            pinned=settings.keyholder_id)
               if settings.keyholder_url else None)
    return Coordinator(sessions=sessions, registry=ModelRegistry(settings.tracking_uri), anchors=anchors)
