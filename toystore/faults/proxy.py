"""A fault-injecting TCP proxy: one listening port per directed link between processes.

Network faults without root: every replica reaches every other replica, and the frontend
reaches every replica, through its own link (``order-1_to_order-2``, ``frontend_to_order-3``),
so a partition is precise per direction. A small HTTP API on loopback changes a link:

- ``GET /links`` lists every link and its settings;
- ``POST /links/<name>`` ``{"mode": "pass"|"blackhole", "delay_ms": n, "drop_fraction": f}``
  (any subset) changes one; ``POST /reset`` puts every link back to pass.

``blackhole`` accepts connections and holds them without forwarding a byte, and silences the
connections already open (what a cut cable does: the sender waits until it times out); when
the link passes again those silenced connections are closed, since bytes were lost on them.
``drop_fraction`` resets that fraction of new connections at once. ``delay_ms`` delays every
chunk, both ways, keeping their order.

Run it as ``python -m toystore.faults.proxy --control-port P --link NAME=LISTEN:HOST:PORT ...``;
:class:`toystore.cluster.LocalCluster` does so when configured with ``proxied=True``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from klein import Klein
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from toystore.faults.links import LinkSpec, parse_link_spec
from toystore.http import ApiError, install_json_errors, json_response, read_json_object

MODES = ("pass", "blackhole")
MAX_DELAY_MS = 60_000

log = Logger()


@dataclass(frozen=True)
class LinkSettings:
    """How a link treats traffic now."""

    mode: str = "pass"
    delay_ms: int = 0
    drop_fraction: float = 0.0

    def updated(self, body: Mapping[str, Any]) -> LinkSettings:
        """These settings changed by a control request (any subset of the fields).

        :raises ApiError: 400 for an unknown field or a value out of range; nothing changes.
        """
        unknown = sorted(set(body) - {"mode", "delay_ms", "drop_fraction"})
        if unknown:
            raise ApiError(400, f"Unknown link settings {unknown}; use mode, delay_ms, drop_fraction.")
        changes: dict[str, Any] = {}
        if "mode" in body:
            if body["mode"] not in MODES:
                raise ApiError(400, f"'mode' must be one of {', '.join(MODES)}.")
            changes["mode"] = body["mode"]
        if "delay_ms" in body:
            delay = body["delay_ms"]
            if type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
                raise ApiError(400, f"'delay_ms' must be a whole number from 0 to {MAX_DELAY_MS}.")
            changes["delay_ms"] = delay
        if "drop_fraction" in body:
            fraction = body["drop_fraction"]
            if type(fraction) not in (int, float) or not 0.0 <= fraction <= 1.0:
                raise ApiError(400, "'drop_fraction' must be a number from 0 to 1.")
            changes["drop_fraction"] = float(fraction)
        return replace(self, **changes)


Admission = str  # "pass" | "blackhole" | "drop"


def admit(settings: LinkSettings, draw: float) -> Admission:
    """What happens to a new connection: held silent, reset at once, or forwarded.

    :param draw: a uniform random number in [0, 1) (injected so tests choose it).
    """
    if settings.mode == "blackhole":
        return "blackhole"
    if draw < settings.drop_fraction:
        return "drop"
    return "pass"


class DelayedPipe:
    """Writes chunks after a delay, in the order they came, on an injected clock.

    :param clock: the reactor's time.
    :param write: where a chunk goes once its time has come.
    """

    def __init__(self, clock: IReactorTime, write: Callable[[bytes], None]) -> None:
        self._clock = clock
        self._write = write
        self._queue: deque[tuple[float, bytes]] = deque()
        self._call: IDelayedCall | None = None

    def send(self, data: bytes, delay: float) -> None:
        """Write ``data`` after ``delay`` seconds, and never before anything sent earlier."""
        if not self._queue and delay <= 0:
            self._write(data)
            return
        self._queue.append((self._clock.seconds() + delay, data))
        if self._call is None:
            self._schedule()

    def cancel(self) -> None:
        """Forget what has not been written yet (the connection is gone)."""
        self._queue.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        due = self._queue[0][0]
        self._call = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._flush)

    def _flush(self) -> None:
        self._call = None
        now = self._clock.seconds()
        while self._queue and self._queue[0][0] <= now:
            self._write(self._queue.popleft()[1])
        if self._queue:
            self._schedule()


# ---------------------------------------------------------------- Twisted shells


@dataclass(eq=False)
class Link:
    """One directed link: its settings and its live connections."""

    spec: LinkSpec
    clock: IReactorTime
    rng: random.Random
    settings: LinkSettings = field(default_factory=LinkSettings)
    connections: set[ProxyServerProtocol] = field(default_factory=set)

    def update(self, settings: LinkSettings) -> None:
        """Apply new settings to future and open connections."""
        before, self.settings = self.settings, settings
        if before != settings:
            log.info("Link {name}: {settings}", name=self.spec.name, settings=asdict(settings))
        if settings.mode == "blackhole":
            for connection in list(self.connections):
                connection.silence()
        elif before.mode == "blackhole":
            for connection in list(self.connections):
                if connection.silenced:
                    connection.transport.abortConnection()  # type: ignore[union-attr]

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.settings), "listen_port": self.spec.listen_port,
                "target": f"{self.spec.target_host}:{self.spec.target_port}",
                "connections": len(self.connections)}


class ProxyClientProtocol(Protocol):
    """The proxy's connection to the destination; answers flow back through the server side."""

    def __init__(self, server: ProxyServerProtocol) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.target_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.server.from_target(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.server.target_lost()


class _TargetFactory(ClientFactory):
    noisy = False

    def __init__(self, server: ProxyServerProtocol) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> ProxyClientProtocol:
        return ProxyClientProtocol(self.server)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.server.target_lost()


class ProxyServerProtocol(Protocol):
    """A connection accepted on a link's port."""

    def __init__(self, link: Link, connect: Callable[[str, int, ClientFactory], Any]) -> None:
        self.link = link
        self._connect = connect
        self.silenced = False
        self._target: ProxyClientProtocol | None = None
        self._pending: list[bytes] = []
        self._to_target: DelayedPipe | None = None
        self._to_source: DelayedPipe | None = None

    def connectionMade(self) -> None:
        decision = admit(self.link.settings, self.link.rng.random())
        if decision == "drop":
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.link.connections.add(self)
        if decision == "blackhole":
            self.silenced = True
            return
        self._to_source = DelayedPipe(self.link.clock, self._write_to_source)
        self._connect(self.link.spec.target_host, self.link.spec.target_port, _TargetFactory(self))

    def _write_to_source(self, data: bytes) -> None:
        # An empty chunk marks the destination's close, queued behind the delayed bytes.
        if data:
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def silence(self) -> None:
        """Stop forwarding both ways, keeping both connections open, as a partition does."""
        self.silenced = True
        for pipe in (self._to_target, self._to_source):
            if pipe is not None:
                pipe.cancel()

    def _delay(self) -> float:
        return self.link.settings.delay_ms / 1000.0

    def dataReceived(self, data: bytes) -> None:
        if self.silenced:
            return
        if self._to_target is None:
            self._pending.append(data)
        else:
            self._to_target.send(data, self._delay())

    def target_connected(self, target: ProxyClientProtocol) -> None:
        if self.transport is None or self not in self.link.connections:
            target.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._target = target
        self._to_target = DelayedPipe(self.link.clock, target.transport.write)  # type: ignore[union-attr]
        pending, self._pending = self._pending, []
        if not self.silenced:
            for chunk in pending:
                self._to_target.send(chunk, self._delay())

    def from_target(self, data: bytes) -> None:
        if not self.silenced and self._to_source is not None:
            self._to_source.send(data, self._delay())

    def target_lost(self) -> None:
        """The destination closed or could not be reached: close the source side too
        (after the delayed bytes, unless the link is silenced)."""
        if self.silenced or self._to_source is None or self not in self.link.connections:
            return  # silenced: the source must time out; gone: nothing to close
        self._to_source.send(b"", self._delay())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.link.connections.discard(self)
        for pipe in (self._to_target, self._to_source):
            if pipe is not None:
                pipe.cancel()
        if self._target is not None and self._target.transport is not None:
            self._target.transport.abortConnection()  # type: ignore[attr-defined]


class LinkFactory(Factory):
    noisy = False

    def __init__(self, link: Link, connect: Callable[[str, int, ClientFactory], Any]) -> None:
        self.link = link
        self._connect = connect

    def buildProtocol(self, addr: Any) -> ProxyServerProtocol:
        return ProxyServerProtocol(self.link, self._connect)


class ControlApi:
    """The HTTP API that changes links (loopback only: it is a test harness's control)."""

    app = Klein()

    def __init__(self, links: Mapping[str, Link]) -> None:
        self._links = dict(links)

    def _link(self, name: str) -> Link:
        link = self._links.get(name)
        if link is None:
            raise ApiError(404, f"No link named {name!r}.")
        return link

    @app.route("/links", methods=["GET"])
    async def list_links(self, request: IRequest) -> bytes:
        return json_response(request, {"links": {name: link.describe() for name, link in sorted(self._links.items())}})

    @app.route("/links/<name>", methods=["GET"])
    async def show_link(self, request: IRequest, name: str) -> bytes:
        return json_response(request, self._link(name).describe())

    @app.route("/links/<name>", methods=["POST"])
    async def change_link(self, request: IRequest, name: str) -> bytes:
        link = self._link(name)
        link.update(link.settings.updated(read_json_object(request)))
        return json_response(request, link.describe())

    @app.route("/reset", methods=["POST"])
    async def reset(self, request: IRequest) -> bytes:
        for link in self._links.values():
            link.update(LinkSettings())
        return json_response(request, {"reset": sorted(self._links)})


install_json_errors(ControlApi.app)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toystore.faults.proxy",
                                     description="Fault-injecting TCP proxy, one port per directed link.")
    parser.add_argument("--control-port", type=int, required=True, help="the HTTP control API's port")
    parser.add_argument("--interface", default="127.0.0.1", help="where links and the API listen")
    parser.add_argument("--link", action="append", default=[], metavar="NAME=LISTEN:HOST:PORT",
                        help="a link (repeat the option for each)")
    parser.add_argument("--seed", type=int, default=None, help="seed for connection drops")
    args = parser.parse_args(argv)
    try:
        specs = [parse_link_spec(text) for text in args.link]
    except ValueError as error:
        parser.error(str(error))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from toystore.http import QuietSite

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    rng = random.Random(args.seed)
    links: dict[str, Link] = {}
    for spec in specs:
        link = Link(spec, reactor, rng)  # type: ignore[arg-type]
        links[spec.name] = link
        reactor.listenTCP(spec.listen_port, LinkFactory(link, reactor.connectTCP),  # type: ignore[attr-defined]
                          interface=args.interface)
    reactor.listenTCP(args.control_port, QuietSite(ControlApi(links).app.resource()),  # type: ignore[attr-defined]
                      interface=args.interface)
    log.info("Proxy ready: {count} links, control on port {port}", count=len(links), port=args.control_port)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
