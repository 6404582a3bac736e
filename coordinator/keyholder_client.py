"""The coordinator's only way to the key holder: its HTTP API (``federation.keyholder_api``).

The coordinator never holds the secret key and never shares a process with the key holder; it
presents its bearer token and gets back either the decrypted data of a sum or the key holder's
refusal, raised here as the protocol's own error (same class and message on both sides).
"""

from __future__ import annotations

import httpx
import numpy as np

from federation import errors as protocol_errors
from federation.errors import PrivacyError, SettingsError
from federation.keyholder_api import (
    DECRYPT_PATH,
    INFO_PATH,
    REQUEST_HEADER,
    DecryptRequest,
    KeyHolderInfo,
    encode_request,
)

__all__ = ["KeyHolderClient"]

# The key holder's own refusals (keyholder.errors) are PrivacyErrors; they keep their names in the message.
_KNOWN = {name: getattr(protocol_errors, name) for name in ("NotEnoughSitesError", "CiphertextError",
                                                            "AggregateCheckError")}


class KeyHolderClient:
    """Speaks to the key holder at ``url`` with bearer ``token`` (``Decryptor``)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        # One connection pool for the whole run: a new client per request costs a connection set-up
        # on every decryption (most of the HTTP hop in `fenji bench he-overhead`).
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._info: KeyHolderInfo | None = None

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SettingsError(f"cannot reach the key holder at {self.url} ({exc}): is `fenji keyholder serve` "
                                "running, and FENJI_KEYHOLDER_URL right?") from exc

    def info(self) -> KeyHolderInfo:
        if self._info is None:
            answer = self._request("GET", INFO_PATH)
            if answer.status_code != 200:
                raise SettingsError(f"the key holder at {self.url} answered {answer.status_code} to {INFO_PATH}")
            self._info = KeyHolderInfo.model_validate_json(answer.content)
        return self._info

    def decrypt_aggregate(self, blob: bytes, request: DecryptRequest) -> np.ndarray:
        """The decrypted data of ``blob``, or the key holder's refusal as a ``PrivacyError``."""
        if not self._token:
            raise SettingsError("no key holder token: set FENJI_KEYHOLDER_TOKEN to the token "
                                "`fenji keyholder token issue` printed")
        answer = self._request("POST", DECRYPT_PATH, content=blob, headers={
            "Authorization": f"Bearer {self._token}", REQUEST_HEADER: encode_request(request),
            "Content-Type": "application/octet-stream"})
        if answer.status_code == 200:
            return np.frombuffer(answer.content, dtype="<f8").astype(float)
        try:
            body = answer.json()
            name, detail = str(body.get("error", "")), str(body.get("detail", answer.text))
        except ValueError:
            name, detail = "", answer.text
        if answer.status_code == 401:
            raise SettingsError(f"the key holder refused the coordinator's token (401): {detail}")
        raise _KNOWN.get(name, PrivacyError)(f"the key holder refused ({name or answer.status_code}): {detail}")
