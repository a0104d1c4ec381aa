"""Command-line options and environment shared by the three roles (DESIGN.md, "Processes").

Addresses come from the environment and an option of the same meaning overrides them;
the cluster token only from the environment, so that it never shows in ``ps``.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

from hyperlink import URL, DecodedURL
from twisted.logger import Logger
from twisted.python import usage

from toystore.logs import LEVELS, install_level

CATALOG_URL_ENV = "TOYSTORE_CATALOG_URL"
FRONTEND_URL_ENV = "TOYSTORE_FRONTEND_URL"
ORDER_REPLICAS_ENV = "TOYSTORE_ORDER_REPLICAS"
TOKEN_ENV = "TOYSTORE_CLUSTER_TOKEN"

DEFAULT_CATALOG_URL = "http://127.0.0.1:8001"
DEFAULT_FRONTEND_URL = "http://127.0.0.1:8000"
ORDER_PORT_BASE = 8100
DEFAULT_SNAPSHOT_EVERY = 10_000  # Raft entries applied between two snapshots

log = Logger()


def parse_base_url(text: str) -> str:
    """An ``http://host:port`` URL without a trailing slash; UsageError otherwise."""
    text = text.strip().rstrip("/")
    try:
        url = URL.from_text(text)
    except Exception:
        raise usage.UsageError(f"{text!r} is not a URL like http://127.0.0.1:8001") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise usage.UsageError(f"{text!r} is not a URL like http://127.0.0.1:8001")
    return DecodedURL(url).to_text()


def parse_url_list(text: str) -> list[str]:
    """Comma-separated base URLs."""
    return [parse_base_url(part) for part in text.split(",") if part.strip()]


def parse_replicas(text: str) -> dict[int, str]:
    """``1=http://...,2=http://...`` into ``{1: url, 2: url}``."""
    replicas: dict[int, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        ident, sep, url = part.partition("=")
        if not sep or not ident.strip().isdigit() or int(ident) < 1:
            raise usage.UsageError(f"{part!r} is not of the form ID=URL with ID >= 1 (e.g. 1=http://127.0.0.1:8101)")
        replicas[int(ident)] = parse_base_url(url)
    return replicas


def parse_catalog_address(text: str) -> str | dict[int, str]:
    """The catalog: one URL (a lone catalog) or its members in :func:`parse_replicas`' form
    (a replicated catalog); UsageError naming both forms otherwise."""
    try:
        return parse_replicas(text) if "=" in text else parse_base_url(text)
    except usage.UsageError as error:
        raise usage.UsageError(f"The catalog is one URL (http://127.0.0.1:8001) or its members as "
                               f"1=http://127.0.0.1:8001,2=http://127.0.0.1:8002,...: {error}") from None


def default_replicas(count: int = 3, host: str = "127.0.0.1") -> dict[int, str]:
    return {i: f"http://{host}:{ORDER_PORT_BASE + i}" for i in range(1, count + 1)}


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number")
    return value


class CommonOptions(usage.Options):
    """Options every role takes."""

    optFlags = [
        ["insecure", None, "Run without a cluster token (internal endpoints open to anyone)."],
    ]
    optParameters = [
        ["interface", None, "127.0.0.1", "Address to listen on (0.0.0.0 on a real host)."],
        ["db-delay", None, 0.0, "Simulated processing time per database read or write, in seconds.", non_negative_float],
        ["data-dir", None, "./data", "Folder for durable state; each process uses its own subfolder."],
        ["log-level", None, "info", "Lowest level logged: debug, info, warn, error or critical."],
    ]

    env: Mapping[str, str] = os.environ

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"Unexpected arguments: {' '.join(args)}")
        if self["log-level"] not in LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVELS)}.")
        # twistd's own options are parsed by now and its logger is built after us.
        install_level(getattr(self, "parent", None), self["log-level"])

    def cluster_token(self) -> str | None:
        """The token, or None with ``--insecure``; exits with one line when it is missing."""
        token = self.env.get(TOKEN_ENV, "")
        if token:
            return token
        if self["insecure"]:
            log.warn("Running with --insecure: internal endpoints accept requests without a token.")
            return None
        sys.exit(f"error: {TOKEN_ENV} is not set; set it to the same secret on every service, or pass --insecure.")

    def env_default(self, key: str, variable: str, default: str) -> str:
        value = self[key]
        if value is None:
            value = self.env.get(variable) or default
        return value


def port_option(default: int | None) -> list:
    return ["port", "p", default, "TCP port to listen on.", _port]
