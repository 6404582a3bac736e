"""One router per resource: meta (health, me), accounts, models (versions, approvals, rollback), audit."""
