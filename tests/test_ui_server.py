"""Every Prefect server the project starts (EmbeddedServer: the tests', the lab's, the
benchmarks') runs without promotional content and analytics, as its settings API reports."""

from __future__ import annotations

import httpx

from tests.conftest import API_URL, AUTH_STRING


def quiet_settings(api_url: str, auth_string: str) -> dict[str, object]:
    """What the running server at `api_url` reports of its promotional content and analytics."""
    user, token = auth_string.split(":", 1)
    response = httpx.get(f"{api_url}/admin/settings", auth=(user, token), timeout=10)
    response.raise_for_status()
    server = response.json()["server"]
    return {
        "analytics_enabled": server["analytics_enabled"],
        "show_promotional_content": server["ui"]["show_promotional_content"],
    }


def test_the_test_server_shows_no_promotions_and_sends_no_analytics(prefect_server):
    assert quiet_settings(API_URL, AUTH_STRING) == {
        "analytics_enabled": False,
        "show_promotional_content": False,
    }
