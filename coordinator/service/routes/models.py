"""``/models``: registered versions with per-site metrics, promotion under four eyes, rollback."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.model_card import DEFAULT_CARD_LANG
from coordinator.service import governance
from coordinator.service.chain import anchor_head
from coordinator.service.curves import VersionCurves, version_curves
from coordinator.service.db import Account, Approval, Promotion
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody, NotFound
from coordinator.service.schemas import (
    ChangeResult,
    PromotionPublic,
    ReasonBody,
    RollbackBody,
    TaskList,
)
from coordinator.service.versions import RoundMetrics, VersionView

router = api_router(tags=["models"])
Task = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="e.g. triage, diagnosis")]
Version = Annotated[str, Path(pattern=r"^[0-9]{1,9}$")]
_CHANGE_ERRORS = {404: {"model": ErrorBody, "description": "No such version"},
                  409: {"model": ErrorBody, "description": "Refused: four eyes, not approved before, or serving already"},
                  503: {"model": ErrorBody, "description": "The registry or the audit chain refused; nothing changed"}}


def _public(session: Session, promotion: Promotion) -> PromotionPublic:
    rows = session.execute(select(Approval, Account.name).join(Account, Account.id == Approval.account_id)
                           .where(Approval.promotion_id == promotion.id).order_by(Approval.id)).all()
    return PromotionPublic.of(promotion, [(a, name) for a, name in rows])


@router.get("/models", summary="The tasks with registered models")
def list_models(coordinator: CoordinatorDep) -> TaskList:
    return TaskList(tasks=coordinator.registry.tasks())


@router.get("/models/{task}/versions", summary="Versions with per-site metrics and the best-worst site gap")
def list_versions(task: Task, coordinator: CoordinatorDep) -> list[VersionView]:
    return coordinator.registry.versions(task)


@router.get("/models/{task}/versions/{version}/rounds", summary="The version's metrics per training round",
            responses={404: {"model": ErrorBody, "description": "No such version"}})
def version_rounds(task: Task, version: Version, coordinator: CoordinatorDep) -> RoundMetrics:
    found = coordinator.registry.rounds(task, version)
    if found is None:
        raise NotFound(f"fenji-{task} has no version {version}")
    return found


@router.get("/models/{task}/versions/{version}/curves", summary="ROC and calibration curves per site",
            description="Each site's ROC points and calibration bins for the version, read from the counts the "
                        "site released with its final evaluation, of the binary view named in `view` (positive "
                        "class, top-label confidence, or triage level 2 or more urgent; cells under a site's "
                        "minimum n withheld, counts rounded).",
            responses={404: {"model": ErrorBody, "description": "No such version"},
                       503: {"model": ErrorBody, "description": "The registry refused"}})
def version_curves_route(task: Task, version: Version, coordinator: CoordinatorDep) -> VersionCurves:
    return version_curves(coordinator.registry, task, version)


@router.get("/models/{task}/versions/{version}/card", response_class=Response, summary="The version's model card",
            description="The markdown model card registered with the version, in `lang` (zh-CN by default, or en). "
                        "A version registered before cards were written in Chinese has only its English card: it "
                        "is served then, and `Content-Language` says which language the card is in.",
            responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}, "description": "The card",
                             "headers": {"Content-Language": {"schema": {"type": "string"},
                                                              "description": "zh-CN or en"}}},
                       404: {"model": ErrorBody, "description": "No such version, or it carries no card"},
                       503: {"model": ErrorBody, "description": "The registry refused"}})
def version_card(task: Task, version: Version, coordinator: CoordinatorDep,
                 lang: Annotated[Literal["zh-CN", "en"], Query(description="The card's language")] = DEFAULT_CARD_LANG,
                 ) -> Response:
    markdown, shown = coordinator.registry.card(task, version, lang)
    return Response(markdown, media_type="text/markdown; charset=utf-8", headers={"Content-Language": shown})


@router.post("/models/{task}/versions/{version}/approve", responses=_CHANGE_ERRORS,
             summary="Approve a version for production: the second commissioner's approval applies it")
def approve(task: Task, version: Version, body: ReasonBody, caller: Caller, session: Db,
            coordinator: CoordinatorDep) -> ChangeResult:
    promotion = governance.approve(session, coordinator.registry, caller, task=task, version=version,
                                   reason=body.reason)
    anchor = anchor_head(coordinator.sessions, coordinator.anchors)
    return ChangeResult(promotion=_public(session, promotion), anchored_seq=anchor.seq if anchor else None)


@router.post("/models/{task}/rollback", responses=_CHANGE_ERRORS,
             summary="Point production back at an earlier approved version")
def rollback(task: Task, body: RollbackBody, caller: Caller, session: Db, coordinator: CoordinatorDep) -> ChangeResult:
    promotion = governance.rollback(session, coordinator.registry, caller, task=task, version=body.version,
                                    reason=body.reason)
    anchor = anchor_head(coordinator.sessions, coordinator.anchors)
    return ChangeResult(promotion=_public(session, promotion), anchored_seq=anchor.seq if anchor else None)


@router.get("/promotions", summary="Promotions and rollbacks: pending ones wait for a second commissioner")
def list_promotions(session: Db) -> list[PromotionPublic]:
    return [_public(session, p) for p in session.execute(select(Promotion).order_by(Promotion.id.desc())).scalars()]
