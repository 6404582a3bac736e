"""The console page without a browser: served at ``/`` in zh-CN, everything it loads from this server
(no CDN), a CSP that forbids the rest, and every file of it shipped in the package (its own, and the
model-card renderer it shares with the clinic's page)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import tomllib
from fastapi.testclient import TestClient

from coordinator.service import create_app, open_coordinator
from coordinator.service.routes.console import CONSOLE_DIR
from coordinator.settings import load_coordinator_settings
from federation.pages import SHARED_STATIC_DIR

ROOT = Path(__file__).resolve().parents[3]
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name in createElementNS, never fetched


@pytest.fixture()
def client(tmp_path):
    coordinator = open_coordinator(load_coordinator_settings(home=str(tmp_path / "home")))
    with TestClient(create_app(coordinator)) as client:
        yield client


def test_the_page_is_zh_cn_and_loads_only_from_this_server(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN">' in page.text and "<title>分级 Fenji · 卫健委治理台</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert loaded and all(url.startswith("/console/") or url == "data:," for url in loaded), loaded
    for url in (u for u in loaded if u.startswith("/console/")):
        assert client.get(url).status_code == 200, url
    assert client.get("/console/").text == page.text
    # The language is English only when this browser chose it before.
    assert 'localStorage.getItem("fenji.console.lang") === "en" ? "en" : "zh"' in (CONSOLE_DIR / "console.js").read_text()


def test_no_file_of_the_console_names_another_host():
    files = sorted(CONSOLE_DIR.iterdir())
    assert {f.suffix for f in files} == {".html", ".js", ".css"}
    files += sorted(SHARED_STATIC_DIR.iterdir())  # served under /console/ too
    for file in files:
        text = file.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), file.name
        assert "@import" not in text and "url(" not in text, file.name


def test_every_console_file_is_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, folder in (("coordinator.service", CONSOLE_DIR), ("federation", SHARED_STATIC_DIR)):
        for file in folder.iterdir():
            assert any(fnmatch.fnmatch(f"{folder.name}/{file.name}", p) for p in package_data[package]), file.name
