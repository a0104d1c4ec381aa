"""The fault proxy in memory: link settings, ordered delay, and what each mode does to bytes."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from toystore.faults.links import LinkSpec, link_name, parse_link_spec
from toystore.faults.proxy import ControlApi, DelayedPipe, Link, LinkFactory, LinkSettings, admit
from toystore.http import ApiError


def test_link_spec_round_trips_and_bad_specs_say_why() -> None:
    spec = parse_link_spec("order-1_to_order-2=4000:127.0.0.1:8102")
    assert spec == LinkSpec("order-1_to_order-2", 4000, "127.0.0.1", 8102)
    assert parse_link_spec(spec.as_argument()) == spec
    assert link_name("frontend", "order-3") == "frontend_to_order-3"
    for bad in ["nolink", "a=1:host", "a=x:host:2", "a=1:host:0", "=1:h:2", "a=1::2"]:
        with pytest.raises(ValueError):
            parse_link_spec(bad)


def test_settings_change_by_subset_and_refuse_bad_values() -> None:
    settings = LinkSettings().updated({"delay_ms": 50})
    assert settings == LinkSettings(delay_ms=50)
    assert settings.updated({"mode": "blackhole", "drop_fraction": 1}) == LinkSettings("blackhole", 50, 1.0)
    for bad in [{"mode": "cut"}, {"delay_ms": -1}, {"delay_ms": 1.5}, {"delay_ms": True},
                {"drop_fraction": 2}, {"drop_fraction": "half"}, {"speed": 1}]:
        with pytest.raises(ApiError) as error:
            settings.updated(bad)
        assert error.value.code == 400


def test_admission_blackholes_drops_a_fraction_and_passes_the_rest() -> None:
    assert admit(LinkSettings(mode="blackhole"), 0.99) == "blackhole"
    assert admit(LinkSettings(drop_fraction=0.3), 0.29) == "drop"
    assert admit(LinkSettings(drop_fraction=0.3), 0.3) == "pass"
    assert admit(LinkSettings(), 0.0) == "pass"


def test_delayed_pipe_keeps_order_and_waits_the_delay() -> None:
    clock, written = Clock(), []
    pipe = DelayedPipe(clock, written.append)
    pipe.send(b"now", 0)
    pipe.send(b"a", 0.1)
    clock.advance(0.05)
    pipe.send(b"b", 0)  # must not overtake "a"
    assert written == [b"now"]
    clock.advance(0.05)
    assert written == [b"now", b"a", b"b"]
    pipe.send(b"lost", 1)
    pipe.cancel()
    clock.advance(2)
    assert written == [b"now", b"a", b"b"]


class Harness:
    """A link whose outbound connections are StringTransports instead of sockets."""

    def __init__(self, draws: list[float] | None = None) -> None:
        self.clock = Clock()
        rng = random.Random(0)
        if draws is not None:
            rng.random = lambda: draws.pop(0)  # type: ignore[method-assign]
        self.link = Link(LinkSpec("a_to_b", 0, "127.0.0.1", 9), self.clock, rng)
        self.targets: list[StringTransport] = []
        self.pending_factories: list[ClientFactory] = []
        self.factory = LinkFactory(self.link, lambda host, port, factory: self.pending_factories.append(factory))

    def accept(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def connect_target(self) -> tuple[Any, StringTransport]:
        target = self.pending_factories.pop(0).buildProtocol(None)
        transport = StringTransport()
        target.makeConnection(transport)
        return target, transport


def test_pass_forwards_both_ways_with_the_delay() -> None:
    h = Harness()
    h.link.update(LinkSettings(delay_ms=100))
    source, source_transport = h.accept()
    source.dataReceived(b"GET")  # before the destination connection is up
    target, target_transport = h.connect_target()
    assert target_transport.value() == b""
    h.clock.advance(0.1)
    assert target_transport.value() == b"GET"
    target.dataReceived(b"200 OK")
    assert source_transport.value() == b""
    h.clock.advance(0.1)
    assert source_transport.value() == b"200 OK"


def test_blackhole_holds_new_connections_and_silences_open_ones_until_healed() -> None:
    h = Harness()
    open_source, open_transport = h.accept()
    target, target_transport = h.connect_target()
    h.link.update(LinkSettings(mode="blackhole"))
    open_source.dataReceived(b"lost")
    target.dataReceived(b"lost too")
    held, held_transport = h.accept()
    held.dataReceived(b"never sent")
    assert target_transport.value() == b"" and open_transport.value() == b""
    assert h.pending_factories == []  # the held connection never reached the destination
    assert not held_transport.disconnecting and not open_transport.disconnecting
    h.link.update(LinkSettings())
    # Bytes were lost on them: healing closes them, so clients reconnect cleanly.
    assert open_transport.disconnected and held_transport.disconnected  # abortConnection


def test_dropped_connections_are_reset_at_once() -> None:
    h = Harness(draws=[0.1, 0.9])
    h.link.update(LinkSettings(drop_fraction=0.5))
    _, dropped = h.accept()
    _, kept = h.accept()
    assert dropped.disconnected
    assert not kept.disconnected and len(h.pending_factories) == 1


def test_destination_closing_closes_the_source_after_delayed_bytes() -> None:
    h = Harness()
    h.link.update(LinkSettings(delay_ms=50))
    _, source_transport = h.accept()
    target, _ = h.connect_target()
    target.dataReceived(b"bye")
    target.connectionLost()
    assert not source_transport.disconnecting
    h.clock.advance(0.05)
    assert source_transport.value() == b"bye" and source_transport.disconnecting


def test_control_api_lists_changes_and_resets_links() -> None:
    clock = Clock()
    link = Link(LinkSpec("a_to_b", 4000, "127.0.0.1", 9), clock, random.Random(0))
    stub = StubTreq(ControlApi({"a_to_b": link}).app.resource())

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        d = stub.request(method, "http://proxy" + path, data=data)
        stub.flush()
        result = []
        d.addCallback(lambda r: r.json().addCallback(lambda j: result.append((r.code, j))))
        stub.flush()
        return result[0]

    status, body = call("POST", "/links/a_to_b", {"mode": "blackhole", "delay_ms": 20})
    assert status == 200 and body["data"]["mode"] == "blackhole" and body["data"]["delay_ms"] == 20
    assert link.settings == LinkSettings("blackhole", 20, 0.0)
    assert call("POST", "/links/a_to_b", {"mode": "sideways"})[0] == 400
    assert link.settings == LinkSettings("blackhole", 20, 0.0)
    assert call("POST", "/links/nope", {"mode": "pass"})[0] == 404
    status, body = call("GET", "/links")
    assert body["data"]["links"]["a_to_b"]["target"] == "127.0.0.1:9"
    assert call("POST", "/reset")[0] == 200
    assert link.settings == LinkSettings()


def test_source_closing_closes_the_destination_connection() -> None:
    h = Harness()
    source, _ = h.accept()
    _, target_transport = h.connect_target()
    source.connectionLost()
    assert target_transport.disconnected
    assert h.link.connections == set()
