"""``twistd toystore-order``: one order replica."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from toystore.config import (
    CATALOG_URL_ENV,
    DEFAULT_CATALOG_URL,
    DEFAULT_SNAPSHOT_EVERY,
    ORDER_PORT_BASE,
    ORDER_REPLICAS_ENV,
    CommonOptions,
    default_replicas,
    parse_catalog_address,
    parse_replicas,
)

REPLICATION_MODES = ("raft", "primary-backup")


class Options(CommonOptions):
    optFlags = CommonOptions.optFlags + [
        ["join", None, "Raft: at a first start (empty data folder), wait to be added to a running group "
                       "(python -m toystore.admin add) instead of starting one; never campaign on its own."],
    ]
    optParameters = CommonOptions.optParameters + [
        ["id", None, None, "This replica's id (1, 2, 3, ...).", int],
        ["port", "p", None, "TCP port to listen on (default 8100 + id).", int],
        ["replication", None, "raft", "raft or primary-backup."],
        ["catalog-url", None, None, "The catalog: one URL, or its members as ID=URL,... "
                                    f"(default ${CATALOG_URL_ENV} or {DEFAULT_CATALOG_URL})."],
        ["order-replicas", None, None,
         f"Every replica as ID=URL,... (default ${ORDER_REPLICAS_ENV} or 1..3 on ports 8101-8103)."],
        ["snapshot-every", None, DEFAULT_SNAPSHOT_EVERY,
         "Raft: take a snapshot and compact the log once this many entries were applied since the last "
         "(0: never).", int],
    ]

    def postOptions(self) -> None:
        if self["id"] is None or self["id"] < 1:
            raise usage.UsageError("--id is required: a whole number from 1.")
        if self["replication"] not in REPLICATION_MODES:
            raise usage.UsageError(f"--replication must be one of {', '.join(REPLICATION_MODES)}.")
        if self["snapshot-every"] < 0:
            raise usage.UsageError("--snapshot-every must be a whole number from 0.")
        if self["port"] is None:
            self["port"] = ORDER_PORT_BASE + self["id"]
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be a port number.")
        self["catalog-url"] = parse_catalog_address(
            self.env_default("catalog-url", CATALOG_URL_ENV, DEFAULT_CATALOG_URL))
        replicas_text = self.env_default("order-replicas", ORDER_REPLICAS_ENV, "")
        self["order-replicas"] = parse_replicas(replicas_text) if replicas_text else default_replicas()
        if self["join"] and self["replication"] != "raft":
            raise usage.UsageError("--join needs --replication raft: primary-backup's members are fixed.")
        if self["id"] not in self["order-replicas"] and not self["join"]:
            raise usage.UsageError(f"Replica {self['id']} is not in the replica list {self['order-replicas']}.")


def makeService(config: Options) -> IService:
    from twisted.internet import reactor

    from toystore.order.service import build_primary_backup_replica, build_raft_replica

    token = config.cluster_token()
    common = dict(
        reactor=reactor, node_id=config["id"], replicas=config["order-replicas"],
        catalog_url=config["catalog-url"], data_dir=Path(config["data-dir"]), token=token,
        interface=config["interface"], port=config["port"], db_delay=config["db-delay"],
    )
    if config["replication"] == "raft":
        return build_raft_replica(**common, snapshot_every=config["snapshot-every"], join=bool(config["join"]))
    return build_primary_backup_replica(**common)
