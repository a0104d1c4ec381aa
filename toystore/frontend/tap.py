"""``twistd toystore-frontend``: options and the service they build (DESIGN.md, "Processes")."""

from __future__ import annotations

from twisted.application.service import IService

from toystore.config import (
    CATALOG_URL_ENV,
    DEFAULT_CATALOG_URL,
    ORDER_REPLICAS_ENV,
    CommonOptions,
    default_replicas,
    non_negative_int,
    parse_catalog_address,
    parse_replicas,
    port_option,
)
from toystore.frontend.service import build_frontend


class Options(CommonOptions):
    """Frontend options; addresses fall back to the environment, then to the local defaults."""

    optParameters = [
        port_option(8000),
        ["cache-size", None, 8, "How many products the LRU cache keeps (0 disables it).", non_negative_int],
        ["catalog-url", None, None, "The catalog: one URL, or its members as ID=URL,... "
                                    f"(default ${CATALOG_URL_ENV} or {DEFAULT_CATALOG_URL})."],
        ["order-replicas", None, None,
         f"Order replicas as 1=URL,2=URL,... (default ${ORDER_REPLICAS_ENV} or 1..3 on 127.0.0.1:810N)."],
    ]

    def postOptions(self) -> None:
        self["catalog-url"] = parse_catalog_address(
            self.env_default("catalog-url", CATALOG_URL_ENV, DEFAULT_CATALOG_URL))
        replicas_text = self.env_default("order-replicas", ORDER_REPLICAS_ENV, "")
        self["order-replicas"] = parse_replicas(replicas_text) if replicas_text else default_replicas()


def makeService(config: Options) -> IService:
    token = config.cluster_token()
    from twisted.internet import reactor

    return build_frontend(
        reactor,
        port=config["port"],
        interface=config["interface"],
        cache_size=config["cache-size"],
        catalog_url=config["catalog-url"],
        replicas=config["order-replicas"],
        token=token,
    )
