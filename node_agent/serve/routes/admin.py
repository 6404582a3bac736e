"""Site administration: reload the newest approved model, manage the site's access tokens."""

from typing import Annotated

from fastapi import Path, Request, status

from node_agent.serve.advisor import Scorer
from node_agent.serve.deps import Holder, Tokens, api_router
from node_agent.serve.errors import (
    ERROR_RESPONSES,
    AdvisorFailed,
    ErrorBody,
    NoProvider,
)
from node_agent.serve.schemas import ReloadResult, TokenCreate
from node_agent.serve.tokens import IssuedToken, TokenInfo

router = api_router("/admin", tags=["admin"], responses=ERROR_RESPONSES)
_CONFLICT = {409: {"model": ErrorBody, "description": "Refused: see the message"}}


@router.post("/reload", response_model=ReloadResult, summary="Load the newest approved model",
             description="Asks the node agent's model provider for the newest approved advisor and swaps it in. "
             "Requests already running finish on the advisor they started with; none is dropped.",
             responses={**_CONFLICT, 503: {"model": ErrorBody, "description": "The provider failed"}})
def reload(request: Request, holder: Holder) -> ReloadResult:
    provider = request.app.state.provider
    if provider is None:
        raise NoProvider("this node agent was started without a model provider; restart it to change models")
    try:
        new = provider()
    except Exception as exc:
        raise AdvisorFailed("the model provider could not load the newest approved model") from exc
    if not isinstance(new, Scorer):
        raise AdvisorFailed(f"the model provider returned {type(new).__name__}, not an advisor")
    old = holder.swap(new)
    return ReloadResult(swapped=old.models != new.models, previous=old.models, current=new.models)


@router.get("/tokens", response_model=list[TokenInfo], summary="List the site's tokens",
            description="Holder, role and creation time of each token; the tokens themselves are never stored.")
def list_tokens(tokens: Tokens) -> list[TokenInfo]:
    return tokens.list()


@router.post("/tokens", response_model=IssuedToken, status_code=status.HTTP_201_CREATED, summary="Create a token",
             description="A new token for a role. The token is in this answer **only**: only its hash is kept.")
def create_token(body: TokenCreate, tokens: Tokens) -> IssuedToken:
    return tokens.create(role=body.role, name=body.name)


@router.delete("/tokens/{token_id}", response_model=TokenInfo, summary="Revoke a token",
               description="The token stops working at once. The site's last site-admin token cannot be revoked "
               "here (409); use `fenji node token revoke` on the node.",
               responses={**_CONFLICT, 404: {"model": ErrorBody, "description": "No such token"}})
def revoke_token(token_id: Annotated[str, Path(max_length=64)], tokens: Tokens) -> TokenInfo:
    return tokens.revoke(token_id)
