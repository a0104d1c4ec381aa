"""The nemesis: faults on a running :class:`~toystore.cluster.LocalCluster`, each one logged.

Process faults (``kill -9`` and restart on the same data folder, SIGSTOP/SIGCONT) work on any
cluster; network faults (isolating a replica, delaying or dropping connections on a link)
need one started with ``proxied=True``. :meth:`Nemesis.heal_all` undoes everything, so every
scenario can end in a healthy cluster whatever it did.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from toystore.cluster import LocalCluster, http_json
from toystore.faults.links import link_name


@dataclass(frozen=True)
class NemesisEvent:
    """One fault or repair: when (``time.monotonic()``, the history's clock), what, on what."""

    at: float
    action: str
    target: str

    def __str__(self) -> str:
        return f"{self.at:.3f} {self.action} {self.target}"


@dataclass
class Nemesis:
    """Faults on ``cluster``; ``events`` records every one in order.

    :param clock: ``time.monotonic`` unless a test wants another clock.
    :param rng: chooses targets and faults where a scenario picks at random.
    """

    cluster: LocalCluster
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    events: list[NemesisEvent] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    faulty_links: set[str] = field(default_factory=set)

    def _log(self, action: str, target: str) -> NemesisEvent:
        event = NemesisEvent(self.clock(), action, target)
        self.events.append(event)
        return event

    # -- processes ---------------------------------------------------------------------

    @staticmethod
    def replica(replica_id: int) -> str:
        return f"order-{replica_id}"

    def leader(self) -> int | None:
        """The replica that leads now, asking them (None during an election)."""
        return self.cluster.leader()

    def wait_leader(self, timeout: float = 10.0, excluding: int | None = None) -> int:
        """Wait until some replica (other than ``excluding``) leads."""
        return self._wait_for_leader(self.cluster.leader, "a leader", timeout, excluding)

    def _wait_for_leader(self, find: Callable[[], int | None], what: str, timeout: float,
                         excluding: int | None) -> int:
        def found() -> int | None:
            leader = find()
            return leader if leader is not None and leader != excluding else None
        return int(self.cluster.wait_for(found, timeout, what))

    @staticmethod
    def catalog_member(member_id: int) -> str:
        return f"catalog-{member_id}"

    def wait_catalog_leader(self, timeout: float = 10.0, excluding: int | None = None) -> int:
        """Wait until some catalog member (other than ``excluding``) leads."""
        return self._wait_for_leader(self.cluster.catalog_leader, "a catalog leader", timeout, excluding)

    def kill(self, name: str) -> NemesisEvent:
        """``kill -9`` a process (it stays down until :meth:`restart`)."""
        self.paused.discard(name)
        self.cluster.kill(name)
        self.killed.add(name)
        return self._log("kill", name)

    def restart(self, name: str) -> NemesisEvent:
        """Start a killed process again on the same data folder."""
        self.cluster.start_process(name)
        self.killed.discard(name)
        return self._log("restart", name)

    def pause(self, name: str) -> NemesisEvent:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self.cluster.pause(name)
        self.paused.add(name)
        return self._log("pause", name)

    def resume(self, name: str) -> NemesisEvent:
        """SIGCONT."""
        self.cluster.resume(name)
        self.paused.discard(name)
        return self._log("resume", name)

    # -- network (proxied clusters) ----------------------------------------------------

    def set_link(self, name: str, **settings: Any) -> None:
        """Change one proxy link (``mode``, ``delay_ms``, ``drop_fraction``)."""
        if not self.cluster.links:
            raise RuntimeError("network faults need a cluster started with proxied=True")
        status, body = http_json("POST", f"{self.cluster.proxy_url}/links/{name}", body=settings)
        if status != 200:
            raise RuntimeError(f"the proxy refused {settings} on {name}: {body}")
        if settings.get("mode", "pass") != "pass" or settings.get("delay_ms") or settings.get("drop_fraction"):
            self.faulty_links.add(name)

    def isolate(self, replica_id: int) -> NemesisEvent:
        """Cut a replica off from the other replicas both ways; the frontend still reaches it."""
        return self._isolate(self.replica(replica_id), [self.replica(j) for j in self.cluster.replica_ids])

    def isolate_catalog_member(self, member_id: int) -> NemesisEvent:
        """Cut a catalog member off from the other members both ways; the order replicas
        still reach it (and the frontend, which reaches the catalog directly)."""
        return self._isolate(self.catalog_member(member_id),
                             [self.catalog_member(j) for j in self.cluster.catalog_ids])

    def _isolate(self, me: str, group: list[str]) -> NemesisEvent:
        others = [other for other in group if other != me]
        for name in [link_name(me, other) for other in others] + [link_name(other, me) for other in others]:
            self.set_link(name, mode="blackhole")
        return self._log("isolate", me)

    def cut(self, source: str, destination: str) -> NemesisEvent:
        """Blackhole one direction only: ``source`` cannot reach ``destination``, the reverse works."""
        self.set_link(link_name(source, destination), mode="blackhole")
        return self._log("cut", link_name(source, destination))

    def delay(self, source: str, destination: str, delay_ms: int) -> NemesisEvent:
        """Add latency to a link (both directions of its connections)."""
        self.set_link(link_name(source, destination), delay_ms=delay_ms)
        return self._log(f"delay {delay_ms} ms", link_name(source, destination))

    def drop(self, source: str, destination: str, fraction: float) -> NemesisEvent:
        """Reset that fraction of new connections on a link."""
        self.set_link(link_name(source, destination), drop_fraction=fraction)
        return self._log(f"drop {fraction:.0%}", link_name(source, destination))

    def heal_network(self) -> NemesisEvent | None:
        """Every link back to pass, no delay, no drops (logged when some link was faulty)."""
        if not self.cluster.links:
            return None
        status, body = http_json("POST", f"{self.cluster.proxy_url}/reset")
        if status != 200:
            raise RuntimeError(f"the proxy did not reset: {body}")
        if not self.faulty_links:
            return None  # nothing was wrong: no event to log
        self.faulty_links.clear()
        return self._log("heal", "network")

    # -- repair ------------------------------------------------------------------------

    def heal_all(self) -> None:
        """Resume paused processes, restart killed ones, reset every link."""
        for name in sorted(self.paused):
            self.resume(name)
        for name in sorted(self.killed):
            self.restart(name)
        self.heal_network()

    def describe(self) -> str:
        """The event log, one line per fault, times relative to the first."""
        if not self.events:
            return "(no faults)"
        start = self.events[0].at
        return "\n".join(f"+{e.at - start:7.3f}s {e.action} {e.target}" for e in self.events)
