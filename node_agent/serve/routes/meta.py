"""GET /health (public), /me and /schema/form (what the workstation page is built from)."""


from node_agent.serve.deps import Caller, CurrentAdvisor, api_router
from node_agent.serve.errors import ERROR_RESPONSES
from node_agent.serve.schemas import FormSchema, Health, Me, form_schema

public = api_router(public=True, tags=["meta"])
router = api_router(tags=["meta"], responses=ERROR_RESPONSES)


@public.get("/health", response_model=Health, summary="Liveness check",
            description="No token needed; says nothing about patients or models.")
def health() -> Health:
    return Health()


@router.get("/me", response_model=Me, summary="Who this token belongs to",
            description="The token's holder and role; the workstation page checks a token with it at log-in.")
def me(caller: Caller) -> Me:
    return Me(token_id=caller.token_id, name=caller.name, role=caller.role)


@router.get("/schema/form", response_model=FormSchema, summary="The first-visit form",
            description="Features with their zh/en names, units, valid ranges and categories, and the tier and "
            "disclaimer texts: the workstation page builds its form and labels from this.")
def schema_form(advisor: CurrentAdvisor) -> FormSchema:
    return form_schema(advisor.spec)
