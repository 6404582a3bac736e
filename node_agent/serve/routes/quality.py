"""GET /quality: the clinic's decision-quality review, in full, for its site admin."""

from datetime import datetime, timezone
from typing import Annotated

from fastapi import Query

from node_agent.quality import QualityReview
from node_agent.serve.deps import Records, api_router
from node_agent.serve.errors import ERROR_RESPONSES

router = api_router(tags=["quality"], responses=ERROR_RESPONSES)


@router.get("/quality", response_model=QualityReview, summary="Decision-quality review",
            description="Over-referral (referred, but the outcome shows no higher tier was needed), under-referral "
            "(kept here, but a higher tier was needed) and agreement with the recommended tier, with the cases "
            "behind them. Exact counts stay at the clinic: the commission receives only suppressed, rounded "
            "aggregates (`node_agent.quality.released_review`).")
def quality_review(
    records: Records,
    since: Annotated[datetime | None, Query(description="only decisions made at or after this time")] = None,
) -> QualityReview:
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(timezone.utc).replace(tzinfo=None)  # the store keeps naive UTC
    return records.quality(since=since)
