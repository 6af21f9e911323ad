"""The status page: one static HTML file with inline CSS and script, and the data inlined.

The first picture needs no request (the snapshot is embedded as JSON), then the script
refreshes from ``/api/v1/summary`` and ``/api/v1/services?journal=0``; an opened service
fetches its own journal. When the service is unreachable the page keeps the last picture,
marked stale, and keeps trying. Nothing is loaded from anywhere else: an edge box reaches no
CDN, and the API sends a Content-Security-Policy that forbids it.
"""

from __future__ import annotations

import json
import secrets
from functools import cache
from importlib.resources import files

from trafficflip.operations.snapshot import Snapshot


@cache
def template() -> str:
    return (files("trafficflip.operations") / "static" / "status.html").read_text(encoding="utf-8")


def render_page(snapshot: Snapshot, refresh: float) -> tuple[str, str]:
    """The page and the nonce its script runs under (for the Content-Security-Policy)."""
    services = snapshot.services_json(0).decode()
    data = f'{{"summary": {json.dumps(snapshot.summary_json())}, "services": {services}}}'
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
