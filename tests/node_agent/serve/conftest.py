"""Fixtures for the scoring API: a real uvicorn server on a free port, real tokens, a real site store.

``advisor_factory`` is parametrised by ``ADVISORS``: add an entry (e.g. the trained advisor) and
every test using ``served`` runs against it too. Tests that recompute answers from the inputs use
``FakeAdvisor`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx
import pytest

from models.assessment import Assessment
from node_agent.serve import AdvisorHolder, Role, Scorer, TokenStore, create_app
from tests.node_agent.serve.fake_advisor import FakeAdvisor
from tests.node_agent.serve.trained_advisor import trained_advisor
from tests.servers import running  # noqa: F401  (re-exported for the tests here)

ADVISORS: dict[str, Callable[[], Scorer]] = {"fake": FakeAdvisor, "trained": trained_advisor}
MAX_BATCH = 8


class SpyAdvisor:
    """Wraps an advisor and keeps every batch of records the API handed it."""

    def __init__(self, inner: Scorer) -> None:
        self.inner, self.spec, self.models = inner, inner.spec, inner.models
        self.calls: list[list[dict[str, object]]] = []

    def assess(self, records: list[dict[str, object]]) -> list[Assessment]:
        self.calls.append(records)
        return self.inner.assess(records)

    def model_card(self, task: str, lang: str = "en") -> str:
        return self.inner.model_card(task, lang)


@dataclass
class Served:
    base_url: str
    site_dir: Path
    holder: AdvisorHolder
    spy: SpyAdvisor
    tokens: TokenStore
    token: dict[str, str] = field(default_factory=dict)  # role -> a valid token of that role
    provide: Callable[[], Scorer] | None = None  # what POST /admin/reload gets from the provider

    def headers(self, role: str | Role | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.token[Role(role).value]}"}

    def client(self, role: str | Role | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(role), timeout=30)

    def site_rows(self, sql: str, params: list | None = None) -> list[tuple]:
        """Read the site's DuckDB file directly, as another program on the node would."""
        with duckdb.connect(str(self.site_dir / "site.duckdb"), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()


def issue_tokens(tokens: TokenStore) -> dict[str, str]:
    return {role.value: tokens.create(role=role, name=f"test {role.value}").token for role in Role}


@pytest.fixture(scope="module", params=sorted(ADVISORS))
def advisor_factory(request) -> Callable[[], Scorer]:
    return ADVISORS[request.param]


@pytest.fixture(scope="module")
def served(advisor_factory, tmp_path_factory) -> Iterator[Served]:
    """The app on a real server, with one token per role; reload hands out a fresh advisor."""
    site_dir = tmp_path_factory.mktemp("serve") / "clinic_test"
    spy = SpyAdvisor(advisor_factory())
    holder, tokens = AdvisorHolder(spy), TokenStore.for_site(site_dir)
    served = Served("", site_dir, holder, spy, tokens, issue_tokens(tokens), provide=advisor_factory)
    app = create_app(holder, site_dir=site_dir, tokens=tokens, max_batch=MAX_BATCH,
                     provider=lambda: served.provide())
    with running(app) as served.base_url:
        yield served


@pytest.fixture()
def fresh(served: Served, advisor_factory) -> Iterator[Served]:
    """``served``, with its original advisor and provider put back after the test."""
    yield served
    served.holder.swap(served.spy)
    served.provide = advisor_factory
