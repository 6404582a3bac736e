"""A training job's ``personalisation`` flag reaches the sites: with it off, a site's final evaluation
skips the personalisation step (no personalised model is fitted, none is reported); on, the site fits
one on its own rows and reports its metrics and which candidate it chose."""

from __future__ import annotations

import pytest
from flwr.app import MessageType

from node_agent import client_app
from node_agent.client_app import build_client_app
from tests.attacks.conftest import (
    call_node,
    job_config,
    node_message,
    site_admin,
)


@pytest.mark.parametrize("personalisation", [True, False])
def test_the_final_evaluation_personalises_only_when_the_job_asks(personalisation, site, referral_spec, monkeypatch):
    fitted = []

    def personalise(*args, **kwargs):
        fitted.append(args[0].site_id)
        return real(*args, **kwargs)

    real = client_app.personalise
    monkeypatch.setattr(client_app, "personalise", personalise)
    site_admin(site, referral_spec)
    config, flat = job_config(referral_spec, site, run_id=f"personalisation-{personalisation}", final=True,
                              personalisation=personalisation, **{"local-only-epochs": 1})
    reply = call_node(build_client_app([site], allow_plaintext=True), node_message(MessageType.EVALUATE, config, flat))
    assert not reply.has_error() and "refusal" not in reply.content, reply.content
    personal = sorted(k for k in reply.content["metrics"] if k.startswith("personal-"))
    if personalisation:
        assert fitted == [site.name] and "personal-auroc" in personal
        assert reply.content["site"]["personalisation"]
    else:
        assert fitted == [] and personal == [] and "personalisation" not in reply.content["site"]
    assert "local-auroc" in reply.content["metrics"]  # the local-only baseline is another matter
