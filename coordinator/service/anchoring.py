"""The coordinator's client of the key holder's anchor endpoint (``federation.audit.ANCHOR_PATH``):
the key holder countersigns the head of the coordinator's audit chain and keeps the latest one, so a
rewrite of the chain by whoever holds the coordinator's database shows against it.

``transport`` is httpx's seam: tests may pass an ``httpx.MockTransport``, the service uses the network.
"""

from __future__ import annotations

import base64

import httpx

from federation.audit import ANCHOR_PATH, Anchor, AnchorRequest
from federation.errors import AuditTamperedError, SettingsError
from federation.identity import fingerprint
from federation.keyholder_api import INFO_PATH, KeyHolderInfo

__all__ = ["AnchorClient"]


class AnchorClient:
    """Asks the key holder at ``url`` (bearer ``token``) to anchor heads, and reads its latest anchor."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, pinned: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.pinned = pinned  # FENJI_KEYHOLDER_ID: the key holder's fingerprint, if the city pinned it
        self._token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._verify_key: bytes | None = None

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        if not self._token:
            raise SettingsError("no key holder token: set FENJI_KEYHOLDER_TOKEN to the coordinator's token "
                                "from `fenji keyholder token issue`")
        try:
            answer = self._http.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        except httpx.HTTPError as exc:
            raise SettingsError(f"cannot reach the key holder at {self.url} ({exc}) to anchor the audit chain") from exc
        if answer.status_code == 401:
            raise SettingsError(f"the key holder at {self.url} refused the coordinator's token (401)")
        return answer

    def verify_key(self) -> bytes:
        """The key holder's Ed25519 verification key, read from its published info."""
        if self._verify_key is None:
            try:
                answer = self._http.get(INFO_PATH)
                info = KeyHolderInfo.model_validate_json(answer.content)
            except (httpx.HTTPError, ValueError) as exc:
                raise SettingsError(f"cannot read the key holder's info at {self.url}{INFO_PATH}: {exc}") from exc
            key = base64.b64decode(info.verify_key)
            if self.pinned and fingerprint(key) != self.pinned:
                raise AuditTamperedError(f"the key holder at {self.url} is {fingerprint(key)}, not the pinned "
                                         f"{self.pinned} (FENJI_KEYHOLDER_ID): its signatures prove nothing")
            self._verify_key = key
        return self._verify_key

    def anchor(self, seq: int, head: str, entries: list[str]) -> Anchor:
        """The key holder's countersignature of ``head`` (entry ``seq``); ``entries`` are the lines
        since the key holder's latest anchor (``latest``), which they must extend.

        Raises
        ------
        AuditTamperedError
            If the key holder refuses because the head contradicts one it anchored before.
        SettingsError
            If it cannot be reached or refuses the token.
        """
        answer = self._request("POST", ANCHOR_PATH, json=AnchorRequest(seq=seq, head=head, entries=entries).model_dump())
        if answer.status_code == 409:
            raise AuditTamperedError(f"the key holder refused to anchor the audit chain: {_detail(answer)}")
        if answer.status_code != 200:
            raise SettingsError(f"the key holder answered {answer.status_code} to {ANCHOR_PATH}: {_detail(answer)}")
        return Anchor.model_validate_json(answer.content)

    def latest(self) -> Anchor | None:
        """The latest head the key holder anchored for this coordinator (``None``: none yet)."""
        answer = self._request("GET", ANCHOR_PATH)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise SettingsError(f"the key holder answered {answer.status_code} to GET {ANCHOR_PATH}: {_detail(answer)}")
        return Anchor.model_validate_json(answer.content)


def _detail(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", answer.text))
    except ValueError:
        return answer.text
