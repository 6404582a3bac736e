"""``BodyLimit`` as a bare ASGI middleware: a body over the limit is a 413 and never reaches the app,
declared by Content-Length or counted while it streams in; a body within it reaches the app whole."""

from __future__ import annotations

import asyncio
import json

import pytest

from node_agent.serve.middleware import BodyLimit

LIMIT = 100


class EchoApp:
    """Reads the whole body as an app would, keeps it, and answers 200 with its length."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body, more = b"", True
        while more:
            message = await receive()
            assert message["type"] == "http.request", message
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/api/v1/score", "raw_path": b"/api/v1/score", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


def drive(app, headers, chunks: list[bytes]) -> tuple[int, bytes, int]:
    """Send ``chunks`` as ``http.request`` messages through ``BodyLimit(app)``: (status, body, reads)."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []
    reads = 0

    async def receive():
        nonlocal reads
        reads += 1
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # nothing more: a real server would block until the client disconnects

    async def send(message):
        sent.append(message)

    async def main():
        await asyncio.wait_for(BodyLimit(app, max_bytes=LIMIT)(scope(headers), receive, send), 5)

    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, reads


def length(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(n).encode())]


def assert_refused(status: int, body: bytes) -> None:
    assert status == 413
    (item,) = json.loads(body)["detail"]
    assert item["type"] == "payload_too_large" and str(LIMIT) in item["msg"]


def test_a_declared_length_over_the_limit_is_refused_without_calling_the_app():
    app = EchoApp()
    status, body, _ = drive(app, length(LIMIT + 1), [b"x" * (LIMIT + 1)])
    assert_refused(status, body)
    assert app.calls == 0


@pytest.mark.parametrize("size", [0, 1, LIMIT // 2, LIMIT])
def test_a_declared_length_within_the_limit_reaches_the_app_intact(size):
    app = EchoApp()
    payload = bytes(i % 256 for i in range(size))
    status, body, _ = drive(app, length(size), [payload])
    assert status == 200 and body == str(size).encode()
    assert app.calls == 1 and app.bodies == [payload]


def test_a_declared_length_within_the_limit_may_still_arrive_in_pieces():
    app = EchoApp()
    chunks = [b"a" * 30, b"b" * 30, b"c" * 40]
    status, _, _ = drive(app, length(100), chunks)
    assert status == 200 and app.bodies == [b"".join(chunks)]


def test_a_chunked_body_over_the_limit_is_refused_without_calling_the_app():
    app = EchoApp()
    chunks = [b"a" * 40, b"b" * 40, b"c" * 40, b"d" * 40]  # over the limit at the third chunk
    status, body, reads = drive(app, [(b"transfer-encoding", b"chunked")], chunks)
    assert_refused(status, body)
    assert app.calls == 0
    assert reads == 3  # stopped reading as soon as the limit was passed


def test_a_chunked_body_one_byte_over_the_limit_is_refused():
    app = EchoApp()
    status, body, _ = drive(app, [], [b"a" * 50, b"b" * 50, b"!"])
    assert_refused(status, body)
    assert app.calls == 0


@pytest.mark.parametrize("chunks", [
    [b'{"age": ', b"", b'70, "sex": ', b'"M"}'],
    [b"a" * 50, b"b" * 50],  # exactly the limit
    [b""],
    [b"x"] * 20,
])
def test_a_chunked_body_within_the_limit_reaches_the_app_whole(chunks):
    app = EchoApp()
    status, body, _ = drive(app, [(b"transfer-encoding", b"chunked")], chunks)
    whole = b"".join(chunks)
    assert status == 200 and body == str(len(whole)).encode()
    assert app.calls == 1 and app.bodies == [whole]


def test_a_client_gone_mid_upload_reaches_no_app():
    app = EchoApp()
    messages = [{"type": "http.request", "body": b"a" * 10, "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(BodyLimit(app, max_bytes=LIMIT)(scope([]), receive, send), 5))
    assert app.calls == 0 and sent == []


def test_other_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    async def main():
        await BodyLimit(app, max_bytes=LIMIT)({"type": "lifespan"}, None, None)

    asyncio.run(main())
    assert seen == ["lifespan"]
