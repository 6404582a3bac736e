"""``/sites``: the clinics that took part in jobs, when each last replied, and its latest report (what a
role sees of it: ``coordinator.service.sites``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from sqlalchemy import select

from coordinator.service import sites
from coordinator.service.db import Site
from coordinator.service.deps import Caller, Db, api_router
from coordinator.service.errors import ErrorBody
from coordinator.service.sites import SitePublic

router = api_router("/sites", tags=["sites"])
SiteId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="e.g. clinic_a")]


@router.get("", summary="The sites: enrolled, last seen, and the latest report each sent")
def list_sites(caller: Caller, session: Db) -> list[SitePublic]:
    return [SitePublic.of(site, caller.role) for site in session.execute(select(Site).order_by(Site.site_id)).scalars()]


@router.get("/{site_id}", responses={404: {"model": ErrorBody, "description": "No such site"}},
            summary="One site: last seen, and its latest report")
def get_site(site_id: SiteId, caller: Caller, session: Db) -> SitePublic:
    return SitePublic.of(sites.get(session, site_id), caller.role)
