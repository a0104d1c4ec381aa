"""Which order replica leads, and sending requests to it across failovers.

Three layers: pure decisions (:func:`choose_leader`, :class:`Preference`, :func:`classify`)
that the tests drive with plain values; :class:`LeaderTracker`, which polls every replica's
``/health_check`` on the injected clock, keeps the current leader and announces the
frontend's preference (``/set_leader``, the highest live id that says it is caught up);
and :class:`LeaderCaller`, which sends one request to the leader and retries through 421
hints, 503s, refused connections and timeouts until a time budget runs out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from toystore.deferreds import Coalescer, SingleFlight
from toystore.http import ApiError, JsonClient, fetch_json, split_batch_answer

ROLES = ("leader", "follower", "candidate")

log = Logger()


# ---------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class HealthReport:
    """What one replica said about itself in ``GET /health_check``."""

    replica_id: int
    role: str
    term: int
    leader_id: int | None
    caught_up: bool = True  # primary-backup says so; a Raft replica's log is caught up by its election
    members: Mapping[int, str] | None = None  # {id: URL} of its committed configuration, when it says

    @classmethod
    def from_payload(cls, replica_id: int, payload: Mapping[str, Any]) -> HealthReport | None:
        """Parse an answer; None when it is not the documented shape."""
        data = payload.get("data")
        if not isinstance(data, dict):
            return None
        role, term, leader_id = data.get("role"), data.get("term"), data.get("leader_id")
        if role not in ROLES or type(term) is not int or term < 0:
            return None
        if leader_id is not None and type(leader_id) is not int:
            return None
        return cls(replica_id, role, term, leader_id or None, data.get("caught_up", True) is True,
                   _member_urls(data.get("members")))


def _member_urls(value: Any) -> dict[int, str] | None:
    """``{id: URL}`` of a ``members`` list; None when it is absent or not that shape."""
    if not isinstance(value, list) or not value:
        return None
    urls = {}
    for member in value:
        if not isinstance(member, dict) or type(member.get("id")) is not int or not isinstance(member.get("url"), str):
            return None
        if member["url"]:
            urls[member["id"]] = member["url"]
    return urls or None


def followed_members(current: Mapping[int, str], leader: HealthReport | None) -> dict[int, str] | None:
    """The replicas to check from now on, when the leader's committed members are not
    those of ``current``: the group's membership changed (a member added or removed).
    None: keep them. A member this frontend reaches already keeps its address: the
    leader's is where the leader reaches it, which need not be the way from here (a
    proxy, another network)."""
    if leader is None or leader.role != "leader" or leader.members is None or leader.members.keys() == current.keys():
        return None
    return {i: current.get(i, url) for i, url in leader.members.items()}


def choose_leader(reports: Iterable[HealthReport]) -> int | None:
    """The leader according to the replicas that answered, or None while it is unknown.

    Only the highest term any of them reports counts: a replica that still calls itself
    leader at a lower term has been deposed (or is about to be) and cannot commit. At
    that term, a replica that says it leads wins; otherwise the leader id its followers
    report, if that one answered too (followers keep naming a dead leader until their
    election timeout, and sending to it would only fail).
    """
    reports = list(reports)
    if not reports:
        return None
    top_term = max(report.term for report in reports)
    current = [report for report in reports if report.term == top_term]
    leaders = [report.replica_id for report in current if report.role == "leader"]
    if leaders:
        return max(leaders)
    responsive = {report.replica_id for report in reports}
    hinted = [report.leader_id for report in current if report.leader_id in responsive]
    return max(hinted) if hinted else None


@dataclass
class Preference:
    """Decides when to tell the replicas which one the frontend wants as leader.

    The frontend prefers the highest responsive id. It asks for it only once that id has
    answered ``required_streak`` consecutive checks (so a replica that flaps, or misses one
    check, does not cause a transfer each time it comes back), and at most once per
    ``min_interval`` seconds. When no answering replica leads (the leader died) the request
    is the failover itself and is asked for at the first check that sees it: a
    primary-backup group has no leader until the frontend names one, and waiting for a
    streak, or out the interval of the transfer just before (the preference moving back to
    a restarted leader), kept the store from taking orders for up to ``min_interval`` s.
    Announcing without a leader is harmless in Raft mode, where only a leader acts on it.
    """

    min_interval: float = 5.0
    required_streak: int = 2
    _candidate: int | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)
    _last_announced: float | None = field(default=None, init=False)

    def observe(self, responsive: Collection[int], leader: int | None, now: float) -> int | None:
        """Record one round of health checks; returns the id to announce, or None."""
        preferred = max(responsive) if responsive else None
        if preferred is None or preferred != self._candidate:
            self._candidate, self._streak = preferred, 0
        if preferred is None:
            return None
        self._streak += 1
        if leader is None:
            return preferred  # a failover, not a transfer: neither delayed nor counted against the next transfer
        if self._streak < self.required_streak or preferred == leader:
            return None
        if self._last_announced is not None and now - self._last_announced < self.min_interval:
            return None
        self._last_announced = now
        return preferred


@dataclass(frozen=True)
class Final:
    """The replica's answer is the answer (success, or 400/404/409 and the like)."""

    status: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class Redirect:
    """A follower named the leader (421)."""

    leader_id: int
    leader_url: str | None


@dataclass(frozen=True)
class Retry:
    """Try again after rediscovery; ``suspect`` when the replica itself seems broken."""

    suspect: bool


Outcome = Final | Redirect | Retry

# One attempt at the leader's base URL within a timeout: fires with (status, payload).
Exchange = Callable[[str, float], "Deferred[tuple[int, dict[str, Any]]]"]


def classify(status: int, payload: Mapping[str, Any]) -> Outcome:
    """What one answer from an order replica means for the request."""
    if status == 421:
        error = payload.get("error")
        error = error if isinstance(error, dict) else {}
        leader_id, leader_url = error.get("leader_id"), error.get("leader_url")
        if type(leader_id) is int and leader_id > 0:
            return Redirect(leader_id, leader_url if isinstance(leader_url, str) else None)
        return Retry(suspect=False)
    if status >= 500:
        return Retry(suspect=True)
    return Final(status, dict(payload))


# ---------------------------------------------------------------- I/O


class LeaderTracker:
    """Knows the current order leader from health checks and 421 hints.

    :param replicas: ``{id: base URL}`` of the order replicas to start with; from then on,
        those of the leader's committed membership (its health check names them).
    :param client: the service's treq client.
    :param clock: every timer runs on it.
    :param token: the cluster token, or None with ``--insecure``.
    """

    def __init__(
        self,
        replicas: Mapping[int, str],
        client: JsonClient,
        clock: IReactorTime,
        token: str | None,
        *,
        check_interval: float = 0.5,
        check_timeout: float = 1.0,
        announce_interval: float = 5.0,
    ) -> None:
        self.replicas = dict(replicas)
        self._client = client
        self._clock = clock
        self._token = token
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._preference = Preference(min_interval=announce_interval)
        self._leader_id: int | None = None
        self._leader_url: str | None = None
        self._last_known_leader: int | None = None
        self.failovers = 0  # moves from one known leader to another; metrics read it
        self._probes: SingleFlight[str, dict[int, HealthReport]] = SingleFlight()
        self._loop: LoopingCall | None = None
        self._answering: set[int] | None = None

    def start(self) -> None:
        """Start the periodic health checks (the first one at once)."""
        self._loop = LoopingCall(self._check_logging_failures)
        self._loop.clock = self._clock
        self._loop.start(self._check_interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def current_leader(self) -> tuple[int, str] | None:
        if self._leader_id is None or self._leader_url is None:
            return None
        return self._leader_id, self._leader_url

    @property
    def leader_id(self) -> int | None:
        return self._leader_id

    async def find_leader(self) -> tuple[int, str] | None:
        """Ask every replica now (sharing a probe already in flight) and return the leader."""
        await self._probes.run("probe", self._probe)
        return self.current_leader()

    def note_leader_hint(self, leader_id: int, leader_url: str | None) -> tuple[int, str] | None:
        """Adopt the leader a follower named; our own address for it wins over the hint's."""
        url = self.replicas.get(leader_id, leader_url)
        if url is None:
            return self.current_leader()
        self._set_leader(leader_id, url, "a replica named it")
        return leader_id, url

    def mark_failed(self, replica_id: int) -> None:
        """The replica failed a request: stop sending to it until a probe confirms it leads."""
        if replica_id == self._leader_id:
            log.warn("Order leader {leader_id} failed a request; failing over", leader_id=replica_id)
            self._leader_id = self._leader_url = None

    def _set_leader(self, leader_id: int | None, url: str | None, why: str) -> None:
        if leader_id != self._leader_id:
            if leader_id is None:
                log.info("Order leader unknown ({why})", why=why)
            elif self._last_known_leader not in (None, leader_id):
                self.failovers += 1
                log.info("Order leader failover from {previous_leader_id} to {leader_id} at {url} ({why})",
                         previous_leader_id=self._last_known_leader, leader_id=leader_id, url=url, why=why)
            else:
                log.info("Order leader is now {leader_id} at {url} ({why})", leader_id=leader_id, url=url, why=why)
        if leader_id is not None:
            self._last_known_leader = leader_id
        self._leader_id, self._leader_url = leader_id, url

    async def _check_logging_failures(self) -> None:
        # An exception would stop the LoopingCall for good.
        try:
            await self.check()
        except Exception:
            log.failure("Order replica health check failed")

    async def check(self) -> None:
        """One round: probe every replica, adopt the leader, announce the preference if due."""
        reports = await self._probes.run("probe", self._probe)
        # A replica that is still catching up would lead with a short or forked history.
        eligible = [ident for ident, report in reports.items() if report.caught_up]
        wanted = self._preference.observe(eligible, self._leader_id, self._clock.seconds())
        if wanted is not None:
            await self._announce(wanted, sorted(reports))

    async def _probe(self) -> dict[int, HealthReport]:
        answers = await gatherResults(
            [Deferred.fromCoroutine(self._health(ident, url)) for ident, url in sorted(self.replicas.items())]
        )
        reports = {report.replica_id: report for report in answers if report is not None}
        if reports.keys() != self._answering:
            # Only changes are logged: the checks run twice a second.
            log.info("Order replicas answering health checks: {ids}", ids=sorted(reports))
            self._answering = set(reports)
        leader = choose_leader(reports.values())
        members = followed_members(self.replicas, reports.get(leader) if leader is not None else None)
        if members is not None:
            log.info("Order replicas are now {members} (the leader's committed membership)",
                     members=", ".join(f"{i}={url}" for i, url in sorted(members.items())))
            self.replicas = members
        self._set_leader(leader, self.replicas.get(leader) if leader is not None else None, "health checks")
        return reports

    async def _health(self, replica_id: int, url: str) -> HealthReport | None:
        try:
            status, payload = await fetch_json(self._client, "GET", f"{url}/health_check", reactor=self._clock,
                                               timeout=self._check_timeout, token=self._token)
        except CancelledError:
            raise
        except Exception:
            return None
        if status != 200:
            return None
        return HealthReport.from_payload(replica_id, payload)

    async def _announce(self, wanted: int, responsive: list[int]) -> None:
        log.info("Asking order replicas {ids} to make {wanted} the leader", ids=responsive, wanted=wanted)
        await gatherResults(
            [Deferred.fromCoroutine(self._send_set_leader(ident, wanted)) for ident in responsive]
        )

    async def _send_set_leader(self, replica_id: int, wanted: int) -> None:
        try:
            await fetch_json(self._client, "POST", f"{self.replicas[replica_id]}/set_leader", reactor=self._clock,
                             timeout=self._check_timeout, token=self._token, body={"id": wanted})
        except CancelledError:
            raise
        except Exception as error:
            log.info("Order replica {id} did not take /set_leader: {error}", id=replica_id, error=error)


class LeaderCaller:
    """Sends one request to the order leader, following it through failovers.

    A request is retried only where a retry is safe: reads, and writes that carry an
    idempotency key (the caller's duty).

    :param budget: seconds from the first attempt after which the client gets 503.
    :param attempt_timeout: seconds one attempt may take.
    """

    def __init__(
        self,
        tracker: LeaderTracker,
        client: JsonClient,
        clock: IReactorTime,
        token: str | None,
        *,
        budget: float = 8.0,
        attempt_timeout: float = 3.0,
        first_backoff: float = 0.05,
        max_backoff: float = 0.2,
    ) -> None:
        self._tracker = tracker
        self._client = client
        self._clock = clock
        self._token = token
        self._budget = budget
        self._attempt_timeout = attempt_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._order_batches: Coalescer[str, Mapping[str, Any], tuple[int, dict[str, Any]]] = Coalescer(
            self._send_orders, clock)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """The leader's final answer (status, payload); ApiError 503 once the budget is spent."""
        def exchange(url: str, timeout: float) -> Deferred[tuple[int, dict[str, Any]]]:
            return fetch_json(self._client, method, f"{url}{path}", reactor=self._clock, timeout=timeout,
                              token=self._token, body=body)
        return await self._follow_leader(exchange, f"{method} {path}")

    async def place_order(self, order: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /order`` for one order ``{name, quantity, request_id}``, with :meth:`call`'s
        retries; orders that reach this frontend together travel to the leader in one batch."""
        def exchange(url: str, timeout: float) -> Deferred[tuple[int, dict[str, Any]]]:
            # Its own deadline: an order may wait behind a batch already out before its own
            # batch leaves, and an attempt near the end of the budget has less than a whole
            # attempt's timeout.
            return self._order_batches.submit(url, order).addTimeout(timeout, self._clock)
        return await self._follow_leader(exchange, "POST /order")

    async def _send_orders(self, url: str, orders: list[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        status, payload = await fetch_json(self._client, "POST", f"{url}/order", reactor=self._clock,
                                           timeout=self._attempt_timeout, token=self._token, body={"orders": orders})
        return split_batch_answer(status, payload, len(orders))

    async def _follow_leader(self, exchange: Exchange, what: str) -> tuple[int, dict[str, Any]]:
        deadline = self._clock.seconds() + self._budget
        backoff = self._first_backoff
        target = self._tracker.current_leader() or await self._tracker.find_leader()
        redirects = 0
        while True:
            remaining = deadline - self._clock.seconds()
            if target is not None and remaining > 0:
                outcome = await self._attempt(target, exchange, what, min(self._attempt_timeout, remaining))
                if isinstance(outcome, Final):
                    return outcome.status, outcome.payload
                if isinstance(outcome, Redirect):
                    if outcome.leader_id != target[0] and redirects < len(self._tracker.replicas):
                        redirects += 1
                        target = self._tracker.note_leader_hint(outcome.leader_id, outcome.leader_url)
                        continue
                elif outcome.suspect:
                    self._tracker.mark_failed(target[0])
            redirects = 0
            if self._clock.seconds() + backoff >= deadline:
                log.warn("No order leader took {what} within {budget} s", what=what, budget=self._budget)
                raise ApiError(503, "No order leader is reachable; try again shortly.", headers={"Retry-After": "1"})
            await deferLater(self._clock, backoff)
            backoff = min(backoff * 2, self._max_backoff)
            target = await self._tracker.find_leader()

    async def _attempt(self, target: tuple[int, str], exchange: Exchange, what: str, timeout: float) -> Outcome:
        replica_id, url = target
        try:
            status, payload = await exchange(url, timeout)
        except CancelledError:
            raise
        except Exception as error:
            log.info("Order replica {id} failed {what}: {error}", id=replica_id, what=what, error=error)
            return Retry(suspect=True)
        return classify(status, payload)
