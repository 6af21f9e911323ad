"""The status page: one static HTML file with inline CSS and script, and the data inlined.

The first picture needs no request (the services are embedded as JSON), then the script
refreshes from ``/api/v1/services``; when the service is unreachable it keeps the last
picture, marked stale, and keeps trying. Nothing is loaded from anywhere else: an edge box
reaches no CDN, and the API sends a Content-Security-Policy that forbids it.
"""

from __future__ import annotations

import json
import secrets
from functools import cache
from importlib.resources import files

from trafficflip.operations.views import ServiceView


@cache
def template() -> str:
    return (files("trafficflip.operations") / "static" / "status.html").read_text(encoding="utf-8")


def render_page(services: list[ServiceView], refresh: float) -> tuple[str, str]:
    """The page and the nonce its script runs under (for the Content-Security-Policy)."""
    data = json.dumps([s.model_dump(mode="json") for s in services])
    # Inside <script>, "</" would end the element: JSON allows escaping it.
    data = data.replace("<", "\\u003c")
    nonce = secrets.token_urlsafe(16)
    # The data goes in last, so a reason text that looks like a placeholder stays text.
    html = (
        template()
        .replace("{{NONCE}}", nonce)
        .replace("{{REFRESH_MS}}", str(int(refresh * 1000)))
        .replace("{{DATA}}", data)
    )
    return html, nonce
