"""Names and addresses of the proxy's links: shared by the proxy and the cluster supervisor,
which starts it (kept apart so that the supervisor does not import the proxy's server)."""

from __future__ import annotations

from dataclasses import dataclass


def link_name(source: str, destination: str) -> str:
    """The name of the link that ``source`` uses to reach ``destination`` (process names)."""
    return f"{source}_to_{destination}"


@dataclass(frozen=True)
class LinkSpec:
    """Where a link listens and where it forwards to."""

    name: str
    listen_port: int
    target_host: str
    target_port: int

    def as_argument(self) -> str:
        return f"{self.name}={self.listen_port}:{self.target_host}:{self.target_port}"


def parse_link_spec(text: str) -> LinkSpec:
    """Parse ``NAME=LISTEN_PORT:HOST:PORT``.

    :raises ValueError: with a sentence saying what is wrong.
    """
    name, sep, rest = text.partition("=")
    parts = rest.rsplit(":", 2) if sep else []
    if not name or len(parts) != 3 or not parts[1]:
        raise ValueError(f"link {text!r} is not NAME=LISTEN_PORT:HOST:PORT")
    listen, host, port = parts
    try:
        listen_port, target_port = int(listen), int(port)
    except ValueError:
        raise ValueError(f"link {text!r}: ports must be whole numbers") from None
    if not (0 <= listen_port <= 65535 and 0 < target_port <= 65535):
        raise ValueError(f"link {text!r}: ports must be from 0 (listen: any) to 65535")
    return LinkSpec(name, listen_port, host, target_port)
