"""``twistd -n toystore-catalog``: the catalog alone, or ``--id N``: member N of a replicated catalog."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import MultiService
from twisted.python import usage

from toystore.catalog.service import make_catalog_member_service, make_catalog_service
from toystore.config import (
    CATALOG_URL_ENV,
    DEFAULT_CATALOG_URL,
    DEFAULT_FRONTEND_URL,
    DEFAULT_SNAPSHOT_EVERY,
    FRONTEND_URL_ENV,
    CommonOptions,
    non_negative_float,
    non_negative_int,
    parse_catalog_address,
    parse_url_list,
)


CATALOG_PORT_BASE = 8000  # member N listens on 8000 + N by default; a catalog alone on 8001


class Options(CommonOptions):
    """Options of the catalog (DESIGN.md, "Processes"), on top of the common ones."""

    optParameters = [
        ["id", None, None, "Run member N of a replicated catalog (its members: --catalog-url).", int],
        ["port", "p", None, "TCP port to listen on (default 8001; member N of a replicated catalog: 8000 + N).",
         int],
        ["restock-interval", None, 10.0, "Seconds between restocks of sold-out toys (0: never).", non_negative_float],
        ["restock-to", None, 100, "Stock a sold-out toy is brought back to.", non_negative_int],
        ["initial-stock", None, 100, "Stock of each toy when the catalog is created (the same on every member).",
         non_negative_int],
        ["frontend-url", None, None,
         f"Comma-separated frontend URLs to invalidate (default ${FRONTEND_URL_ENV} or {DEFAULT_FRONTEND_URL})."],
        ["catalog-url", None, None,
         f"With --id, every member as ID=URL,... (default ${CATALOG_URL_ENV}); a single URL means a catalog alone."],
        ["snapshot-every", None, DEFAULT_SNAPSHOT_EVERY,
         "With --id: take a snapshot and compact the log once this many entries were applied since the last "
         "(0: never).", non_negative_int],
    ]

    def postOptions(self) -> None:
        urls = parse_url_list(self.env_default("frontend-url", FRONTEND_URL_ENV, DEFAULT_FRONTEND_URL))
        if not urls:
            raise usage.UsageError("--frontend-url names no frontend.")
        self["frontend-urls"] = urls
        self["members"] = self._members()
        if self["port"] is None:
            self["port"] = 8001 if self["id"] is None else CATALOG_PORT_BASE + self["id"]
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be a port number.")

    def _members(self) -> dict[int, str] | None:
        """``{id: URL}`` of the replicated catalog this process is a member of; None alone."""
        members = parse_catalog_address(self.env_default("catalog-url", CATALOG_URL_ENV, DEFAULT_CATALOG_URL))
        member_id = self["id"]
        if member_id is None:
            if isinstance(members, dict):
                raise usage.UsageError(f"${CATALOG_URL_ENV} (or --catalog-url) names catalog members: "
                                       "start each with --id N.")
            return None
        if member_id < 1:
            raise usage.UsageError("--id must be a whole number from 1.")
        if not isinstance(members, dict) or member_id not in members:
            raise usage.UsageError(f"Member {member_id} is not in the catalog's members: set ${CATALOG_URL_ENV} "
                                   f"(or --catalog-url) to 1=URL,2=URL,3=URL.")
        return members


def makeService(config: Options) -> MultiService:
    token = config.cluster_token()
    from twisted.internet import reactor

    common = dict(
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
    if config["members"] is None:
        return make_catalog_service(reactor, **common)
    return make_catalog_member_service(reactor, member_id=config["id"], members=config["members"],
                                       snapshot_every=config["snapshot-every"], **common)
