"""``/accounts``: the coordinator admin adds and revokes accounts (each change audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from sqlalchemy import select

from coordinator.service import accounts
from coordinator.service.chain import anchor_head
from coordinator.service.db import Account
from coordinator.service.deps import Caller, CoordinatorDep, Db, api_router
from coordinator.service.errors import ErrorBody
from coordinator.service.schemas import AccountCreate, AccountIssued, AccountPublic

router = api_router("/accounts", tags=["accounts"])
AccountId = Annotated[int, Path(ge=1, le=2_147_483_647)]


@router.get("", summary="Every account (never a token)")
def list_accounts(session: Db) -> list[AccountPublic]:
    return [AccountPublic.of(a) for a in session.execute(select(Account).order_by(Account.id)).scalars()]


@router.post("", status_code=201, summary="Add an account; its token is shown once",
             responses={409: {"model": ErrorBody, "description": "The name is taken"}})
def add_account(body: AccountCreate, caller: Caller, session: Db, coordinator: CoordinatorDep) -> AccountIssued:
    account, token = accounts.add_account(session, name=body.name, role=body.role, actor=caller.name)
    anchor_head(coordinator.sessions, coordinator.anchors)
    return AccountIssued(account=AccountPublic.of(account), token=token)


@router.delete("/{account_id}", summary="Revoke an account's token",
               responses={404: {"model": ErrorBody, "description": "No such active account"},
                          409: {"model": ErrorBody, "description": "The last coordinator admin"}})
def revoke_account(account_id: AccountId, caller: Caller, session: Db, coordinator: CoordinatorDep) -> AccountPublic:
    account = accounts.revoke_account(session, account_id, actor=caller.name)
    anchor_head(coordinator.sessions, coordinator.anchors)
    return AccountPublic.of(account)
