"""The framework's ceiling: a bare Klein app answering a fixed product, served the way the
frontend is served (QuietSite around :func:`~toystore.http.api_root`, default reactor), with
no cache, no lock and no I/O. The cached ``GET /products/<name>`` is reported as a ratio to
it. Served through Klein's own resource instead, it would be a lower ceiling than the
frontend's, and the ratio would credit the cache with what the lean resource saves.

With ``--bare`` it serves the same answer from a plain ``twisted.web.resource.Resource``
instead: the floor of the web framework itself, without Klein's routing.

``python -m toystore.bench.baseline --port 8999 [--bare]`` serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from toystore.http import JSON_CONTENT_TYPE, QuietSite, api_root, install_json_errors

FIXED_PRODUCT = {"name": "Tux", "price": 15.99, "quantity": 100}


class BaselineApi:
    """One route with the frontend's path and answer shape; the body is encoded per request,
    as the frontend's is."""

    app = Klein()

    @app.route("/products/<string:name>", methods=["GET"])
    async def get_product(self, request: IRequest, name: str) -> bytes:
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        return json.dumps({"data": FIXED_PRODUCT}, separators=(",", ":")).encode("utf-8")


install_json_errors(BaselineApi.app)


class BareProductResource(Resource):
    """The same route and answer from twisted.web alone: the body is encoded per request."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        if not request.path.startswith(b"/products/"):
            request.setResponseCode(404)
            return b'{"error":{"code":404,"message":"Not found."}}'
        return json.dumps({"data": FIXED_PRODUCT}, separators=(",", ":")).encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toystore.bench.baseline",
                                     description="Serve a bare Klein app (or twisted.web Resource) with a fixed JSON body.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--bare", action="store_true", help="a plain twisted.web Resource instead of Klein")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    site = QuietSite(BareProductResource() if args.bare else api_root(BaselineApi().app))
    reactor.listenTCP(args.port, site, interface=args.interface)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
