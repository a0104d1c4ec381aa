"""The frontend's status page in memory: ``/status.json`` from a fake catalog ledger and fake
replicas, and ``GET /`` serving the page whose script polls it."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from test_frontend_api import CATALOG_URL, Frontend
from test_frontend_leader import TOKEN


class FakeLedger:
    """A catalog that only answers ``/ledger``, and only with the token."""

    app = Klein()

    def __init__(self) -> None:
        self.toys = {"Whale": {"price": 24.99, "quantity": 0, "initial": 100, "restocked": 0},
                     "Tux": {"price": 15.99, "quantity": 97, "initial": 100, "restocked": 0}}

    @app.route("/ledger", methods=["GET"])
    def ledger(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.getHeader(b"authorization") != f"Bearer {TOKEN}".encode():
            request.setResponseCode(401)
            return json.dumps({"error": {"code": 401, "message": "token"}}).encode()
        return json.dumps({"data": {"toys": self.toys, "reservations": {"held": 4, "confirmed": 9, "released": 1},
                                    "oldest_held_age": 1.5, "highest_term": 0}}).encode()


def with_ledger() -> Frontend:
    frontend = Frontend()
    frontend.network.add(CATALOG_URL, FakeLedger().app.resource())
    return frontend


def raw_get(frontend: Frontend, path: str) -> tuple[int, dict[str, str], bytes]:
    d = frontend.client.request("GET", f"http://frontend.test{path}")

    async def read(response: Any) -> tuple[int, dict[str, str], bytes]:
        plain = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, plain, await response.content()

    d.addCallback(lambda response: Deferred.fromCoroutine(read(response)))
    return frontend.finish(d)


def test_status_json_shows_toys_and_replicas() -> None:
    frontend = with_ledger()
    frontend.lead(2, term=5)
    frontend.network.replicas[2].orders = [{"name": "Tux", "quantity": 3}]
    frontend.tracker.note_leader_hint(2, None)
    code, _, body = frontend.call("GET", "/status.json")
    assert code == 200
    data = body["data"]
    assert data["toys"] == [{"name": "Tux", "price": 15.99, "quantity": 97},
                            {"name": "Whale", "price": 24.99, "quantity": 0}]
    assert data["catalog_reachable"] is True
    assert data["reservations"] == {"held": 4, "oldest_held_age": 1.5}
    assert data["frontend_leader_id"] == 2
    assert [(r["id"], r["reachable"], r["role"], r["term"], r["leader_id"]) for r in data["replicas"]] == [
        (1, True, "follower", 5, 2), (2, True, "leader", 5, 2), (3, True, "follower", 5, 2)]
    assert data["replicas"][1]["commit_index"] == 1
    assert TOKEN not in json.dumps(body)


def test_status_json_reports_unreachable_peers_instead_of_failing() -> None:
    frontend = Frontend()  # its fake catalog has no /ledger: a 404
    frontend.lead(1)
    frontend.network.kill(3)
    frontend.network.hanging.add(frontend.network.url_of(2))
    code, _, body = frontend.call("GET", "/status.json", advance=2.0)
    assert code == 200
    data = body["data"]
    assert (data["toys"], data["catalog_reachable"], data["reservations"]) == ([], False, None)
    assert data["catalog_members"] == []  # a lone catalog: no group to show
    assert [(r["id"], r["reachable"], r["role"]) for r in data["replicas"]] == [
        (1, True, "leader"), (2, False, None), (3, False, None)]


def test_root_serves_the_page_with_its_polling_script() -> None:
    frontend = with_ledger()
    code, headers, body = raw_get(frontend, "/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    page = body.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'fetch("status.json"' in page and "setTimeout(poll" in page
    assert 'id="toys"' in page and 'id="replicas"' in page and 'id="backlog"' in page
    assert "<link" not in page and "src=" not in page  # no external assets
    assert TOKEN not in page
