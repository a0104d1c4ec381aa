"""``twistd -n toystore-catalog``: the catalog's options and service."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import MultiService
from twisted.python import usage

from toystore.catalog.service import make_catalog_service
from toystore.config import (
    DEFAULT_FRONTEND_URL,
    FRONTEND_URL_ENV,
    CommonOptions,
    non_negative_float,
    non_negative_int,
    parse_url_list,
    port_option,
)


class Options(CommonOptions):
    """Options of the catalog (DESIGN.md, "Processes"), on top of the common ones."""

    optParameters = [
        port_option(8001),
        ["restock-interval", None, 10.0, "Seconds between restocks of sold-out toys (0: never).", non_negative_float],
        ["restock-to", None, 100, "Stock a sold-out toy is brought back to.", non_negative_int],
        ["initial-stock", None, 100, "Stock of each toy when the catalog is created.", non_negative_int],
        ["frontend-url", None, None,
         f"Comma-separated frontend URLs to invalidate (default ${FRONTEND_URL_ENV} or {DEFAULT_FRONTEND_URL})."],
    ]

    def postOptions(self) -> None:
        urls = parse_url_list(self.env_default("frontend-url", FRONTEND_URL_ENV, DEFAULT_FRONTEND_URL))
        if not urls:
            raise usage.UsageError("--frontend-url names no frontend.")
        self["frontend-urls"] = urls


def makeService(config: Options) -> MultiService:
    token = config.cluster_token()
    from twisted.internet import reactor

    return make_catalog_service(
        reactor,
        data_dir=Path(config["data-dir"]),
        port=config["port"],
        interface=config["interface"],
        token=token,
        frontends=config["frontend-urls"],
        restock_interval=config["restock-interval"],
        restock_to=config["restock-to"],
        initial_stock=config["initial-stock"],
        db_delay=config["db-delay"],
    )
