"""The clinic's scoring API and the doctor's workstation page, served by the node agent.

    from node_agent.serve import AdvisorHolder, TokenStore, create_app
    app = create_app(AdvisorHolder(advisor), site_dir=site_dir, provider=newest_approved_advisor)
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port)  # node_agent.settings.NodeSettings
"""

from node_agent.serve.access import ACCESS, PUBLIC, Role, allowed_roles
from node_agent.serve.advisor import AdvisorHolder, AdvisorProvider, Scorer
from node_agent.serve.app import create_app
from node_agent.serve.errors import ServeError
from node_agent.serve.records import DecisionLog
from node_agent.serve.schemas import ScoreResult
from node_agent.serve.tokens import IssuedToken, TokenInfo, TokenStore

__all__ = [
    "ACCESS",
    "PUBLIC",
    "Scorer",
    "AdvisorHolder",
    "AdvisorProvider",
    "DecisionLog",
    "IssuedToken",
    "Role",
    "ScoreResult",
    "ServeError",
    "TokenInfo",
    "TokenStore",
    "allowed_roles",
    "create_app",
]
