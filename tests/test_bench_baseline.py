"""The bench's baselines answer exactly what the frontend's cached read answers."""

from __future__ import annotations

import json

from twisted.web.test.requesthelper import DummyRequest

from toystore.bench.baseline import FIXED_PRODUCT, BareProductResource


def _get(path: bytes) -> tuple[int, dict[str, object]]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.path = path
    body = BareProductResource().render_GET(request)
    return request.responseCode or 200, json.loads(body)


def test_the_bare_resource_answers_a_product_as_the_frontend_does() -> None:
    assert _get(b"/products/Tux") == (200, {"data": FIXED_PRODUCT})


def test_the_bare_resource_answers_anything_else_with_a_json_404() -> None:
    code, body = _get(b"/other")
    assert code == 404 and body["error"]["code"] == 404  # type: ignore[index]
