"""The framework's ceiling: a bare Klein app answering a fixed product, served the way the
frontend is served (QuietSite around :func:`~toystore.http.api_root`, default reactor), with
no cache, no lock and no I/O. The cached ``GET /products/<name>`` is reported as a ratio to
it. Served through Klein's own resource instead, it would be a lower ceiling than the
frontend's, and the ratio would credit the cache with what the lean resource saves.

``python -m toystore.bench.baseline --port 8999`` serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from klein import Klein
from twisted.web.iweb import IRequest

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toystore.bench.baseline",
                                     description="Serve a bare Klein app with a fixed JSON body.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    site = QuietSite(api_root(BaselineApi().app))
    reactor.listenTCP(args.port, site, interface=args.interface)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
