"""Which member of a replicated group leads, and sending requests to it across failovers.

Services call two such groups: the order replicas (the frontend) and the catalog's members
(the frontend and the order replicas). Three layers: pure decisions (:func:`choose_leader`,
:func:`classify`) that the tests drive with plain values; :class:`LeaderTracker`, which
polls every member's ``/health_check`` on the injected clock and keeps the current leader
(a lone catalog, one URL started without an id, is a :class:`LoneLeader` instead: always
the leader, never polled); and :class:`LeaderCaller`, which sends requests to the leader and
retries through 421 hints, 503s, refused connections and timeouts until a time budget runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from toystore.deferreds import Coalescer, SingleFlight
from toystore.http import ApiError, JsonClient, fetch_json, split_batch_answer
from toystore.runtime import StartsAfterChildren

ROLES = ("leader", "follower", "candidate")
RETRY_AFTER = {"Retry-After": "1"}

log = Logger()


# ---------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class HealthReport:
    """What one member said about itself in ``GET /health_check``."""

    replica_id: int
    role: str
    term: int
    leader_id: int | None
    caught_up: bool = True  # primary-backup says so; a Raft member's log is caught up by its election
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
    """The members to check from now on, when the leader's committed members are not those
    of ``current``: the group's membership changed (a member added or removed). None: keep
    them. A member this service reaches already keeps its address: the leader's is where
    the leader reaches it, which need not be the way from here (a proxy, another network)."""
    if leader is None or leader.role != "leader" or leader.members is None or leader.members.keys() == current.keys():
        return None
    return {i: current.get(i, url) for i, url in leader.members.items()}


def choose_leader(reports: Iterable[HealthReport]) -> int | None:
    """The leader according to the members that answered, or None while it is unknown.

    Only the highest term any of them reports counts: a member that still calls itself
    leader at a lower term has been deposed (or is about to be) and cannot commit. At
    that term, a member that says it leads wins; otherwise the leader id its followers
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


@dataclass(frozen=True)
class Final:
    """The member's answer is the answer (success, or 400/404/409 and the like)."""

    status: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class Redirect:
    """A follower named the leader (421)."""

    leader_id: int
    leader_url: str | None


@dataclass(frozen=True)
class Retry:
    """Try again after rediscovery; ``suspect`` when the member itself seems broken (it may
    also have acted on the request), ``unsent`` when the request never reached it (its
    connection was refused), so that even a request without a request id may go again."""

    suspect: bool
    unsent: bool = False


Outcome = Final | Redirect | Retry

# One attempt at a member's base URL within a timeout, for the calls still unanswered (their
# positions): fires with one (status, payload) per call.
Exchange = Callable[[str, float, list[int]], "Deferred[list[tuple[int, dict[str, Any]]]]"]


def classify(status: int, payload: Mapping[str, Any]) -> Outcome:
    """What one answer from a member means for the request."""
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
    """Knows a group's current leader from health checks and 421 hints.

    :param replicas: ``{id: base URL}`` of the members to start with; from then on, those of
        the leader's committed membership (its health check names them).
    :param client: the service's treq client.
    :param clock: every timer runs on it.
    :param token: the cluster token, or None with ``--insecure``.
    :param group: the group's name in the logs: ``"order"``, ``"catalog"``.
    """

    def __init__(
        self,
        replicas: Mapping[int, str],
        client: JsonClient,
        clock: IReactorTime,
        token: str | None,
        *,
        group: str,
        check_interval: float = 0.5,
        check_timeout: float = 1.0,
    ) -> None:
        self.replicas = dict(replicas)
        self.group = group
        self._client = client
        self._clock = clock
        self._token = token
        self._check_interval = check_interval
        self._check_timeout = check_timeout
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
        """Ask every member now (sharing a probe already in flight) and return the leader."""
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
        """The member failed a request: stop sending to it until a probe confirms it leads."""
        if replica_id == self._leader_id:
            log.warn("The {group} leader {leader_id} failed a request; failing over", group=self.group,
                     leader_id=replica_id)
            self._leader_id = self._leader_url = None

    def _set_leader(self, leader_id: int | None, url: str | None, why: str) -> None:
        if leader_id != self._leader_id:
            if leader_id is None:
                log.info("The {group} leader is unknown ({why})", group=self.group, why=why)
            elif self._last_known_leader not in (None, leader_id):
                self.failovers += 1
                log.info("The {group} leader moved from {previous_leader_id} to {leader_id} at {url} ({why})",
                         group=self.group, previous_leader_id=self._last_known_leader, leader_id=leader_id,
                         url=url, why=why)
            else:
                log.info("The {group} leader is now {leader_id} at {url} ({why})", group=self.group,
                         leader_id=leader_id, url=url, why=why)
        if leader_id is not None:
            self._last_known_leader = leader_id
        self._leader_id, self._leader_url = leader_id, url

    async def _check_logging_failures(self) -> None:
        # An exception would stop the LoopingCall for good.
        try:
            await self.check()
        except Exception:
            log.failure("A health check of the {group} group failed", group=self.group)

    async def check(self) -> dict[int, HealthReport]:
        """One round: probe every member and adopt the leader; what each one that answered said."""
        return await self._probes.run("probe", self._probe)

    async def _probe(self) -> dict[int, HealthReport]:
        answers = await gatherResults(
            [Deferred.fromCoroutine(self._health(ident, url)) for ident, url in sorted(self.replicas.items())]
        )
        reports = {report.replica_id: report for report in answers if report is not None}
        if reports.keys() != self._answering:
            # Only changes are logged: the checks run twice a second.
            log.info("Members of the {group} group answering health checks: {ids}", group=self.group,
                     ids=sorted(reports))
            self._answering = set(reports)
        leader = choose_leader(reports.values())
        members = followed_members(self.replicas, reports.get(leader) if leader is not None else None)
        if members is not None:
            log.info("The {group} group is now {members} (its leader's committed membership)", group=self.group,
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


class LoneLeader:
    """A group of one that is no Raft group: a lone catalog (one URL, started without
    ``--id``), kept as it was before the catalog was replicated. It is always the leader,
    is never polled, has no id (:attr:`leader_id` is None), and has no member to fail over
    to, so each request gets one attempt.

    :param group: the group's name in the logs and errors: ``"catalog"``.
    """

    leader_id: int | None = None

    def __init__(self, url: str, *, group: str) -> None:
        self.url = url
        self.group = group

    def start(self) -> None:
        """Nothing to poll."""

    def stop(self) -> None:
        """Nothing to stop."""


Leadership = LeaderTracker | LoneLeader


def leadership_of(address: str | Mapping[int, str], client: JsonClient, clock: IReactorTime, token: str | None,
                  *, group: str) -> Leadership:
    """How to find the leader of a group given as one plain URL (a lone member) or as
    ``{id: URL}`` of its members (see :func:`toystore.config.parse_catalog_address`)."""
    if isinstance(address, str):
        return LoneLeader(address, group=group)
    return LeaderTracker(address, client, clock, token, group=group)


class HealthChecks(StartsAfterChildren):
    """Polls a group's members while the service runs (a lone member: nothing to poll).
    Put it after the HTTP pool's service, so that it stops before the pool closes."""


class _AnsweredWhole(Exception):
    """A batch request answered as a whole (a follower's 421, a 503): every call in the
    batch, and every call waiting behind it for the same member, gets that answer, and
    follows the leader with it."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(f"the batch was answered {status}")
        self.status = status
        self.payload = payload


def _as_answers(failure: Failure, count: int) -> list[tuple[int, dict[str, Any]]]:
    failure.trap(_AnsweredWhole)
    return [(failure.value.status, failure.value.payload)] * count


# (base URL, path, field of the items, the fields every item of the batch shares)
BatchKey = tuple[str, str, str, tuple[tuple[str, Any], ...]]


class LeaderCaller:
    """Sends requests to a group's leader, following it through failovers.

    A request goes again after an attempt that may have reached the leader (a timeout, a
    503, a connection lost mid-way) only where that is safe: reads, and batch calls, whose
    items carry request ids that the receiver is idempotent by. Any other request (a
    restock) is answered 503 instead, its outcome unknown. Every request follows a 421 at
    once and goes again after a refused connection: neither reached a leader that acted on it.

    :param leadership: knows the leader: a :class:`LeaderTracker`, or a :class:`LoneLeader`,
        whose requests get one attempt each.
    :param budget: seconds from the first attempt after which the caller gets 503.
    :param attempt_timeout: seconds one attempt may take.
    :param max_batch: the most items one batch request carries (:meth:`call_batch`); at most
        what the receiver takes.
    """

    def __init__(
        self,
        leadership: Leadership,
        client: JsonClient,
        clock: IReactorTime,
        token: str | None,
        *,
        budget: float = 8.0,
        attempt_timeout: float = 3.0,
        first_backoff: float = 0.05,
        max_backoff: float = 0.2,
        max_batch: int = 256,
    ) -> None:
        self._leadership = leadership
        self._client = client
        self._clock = clock
        self._token = token
        self._budget = budget
        self._attempt_timeout = attempt_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._batches: Coalescer[BatchKey, Any, tuple[int, dict[str, Any]]] = Coalescer(
            self._send_batch, clock, max_batch=max_batch)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """The leader's final answer (status, payload); ApiError 503 once the budget is spent,
        or at once when a request other than a GET may have reached the leader unanswered."""
        def exchange(url: str, timeout: float, positions: list[int]) -> Deferred[list[tuple[int, dict[str, Any]]]]:
            return fetch_json(self._client, method, f"{url}{path}", reactor=self._clock, timeout=timeout,
                              token=self._token, body=body).addCallback(lambda answer: [answer])
        (answer,) = await self._follow_leader(exchange, 1, f"{method} {path}", resend=method == "GET")
        return answer

    async def call_batch(self, path: str, field: str, items: list[Any],
                         shared: Mapping[str, Any] | None = None) -> list[tuple[int, dict[str, Any]]]:
        """``POST path`` with ``{field: items, **shared}`` at the leader; each item's (status,
        payload), as if sent alone. The items of calls for the same path and shared fields that
        reach this caller in one reactor turn, or while such a batch is out, travel together.

        The items follow the leader together, with :meth:`call`'s retries, and only those
        without a final answer go again (items carry request ids, so they may): a member that
        stops leading while it works a batch answers 421 for the items it had not taken, and
        a primary-backup replica still syncing 503, inside a 200."""
        tail = (path, field, tuple(sorted((shared or {}).items())))

        def exchange(url: str, timeout: float, positions: list[int]) -> Deferred[list[tuple[int, dict[str, Any]]]]:
            # Its own deadline: the items may wait behind a batch already out before their own
            # batch leaves, and an attempt near the end of the budget has less than a whole
            # attempt's timeout.
            return self._batches.submit_each((url, *tail), [items[p] for p in positions]).addTimeout(
                timeout, self._clock).addErrback(_as_answers, len(positions))
        return await self._follow_leader(exchange, len(items), f"POST {path}", resend=True)

    async def _send_batch(self, key: BatchKey, items: list[Any]) -> list[tuple[int, dict[str, Any]]]:
        url, path, field, shared = key
        status, payload = await fetch_json(self._client, "POST", f"{url}{path}", reactor=self._clock,
                                           timeout=self._attempt_timeout, token=self._token,
                                           body={**dict(shared), field: items})
        if status != 200:
            raise _AnsweredWhole(status, payload)
        return split_batch_answer(status, payload, len(items))

    def _unreachable(self) -> ApiError:
        return ApiError(503, f"No {self._leadership.group} leader is reachable; try again shortly.",
                        headers=RETRY_AFTER)

    async def _follow_leader(self, exchange: Exchange, count: int, what: str, *,
                             resend: bool) -> list[tuple[int, dict[str, Any]]]:
        """The final answers of ``count`` calls that ``exchange`` makes at a member: sent to
        the leader, and again for the calls still without one, until the budget is spent."""
        answers: list[tuple[int, dict[str, Any]] | None] = [None] * count
        pending = list(range(count))
        tracker = self._leadership
        if isinstance(tracker, LoneLeader):
            if self._settle(answers, pending, await self._attempt(tracker.url, exchange, pending, what,
                                                                  self._attempt_timeout)):
                raise self._unreachable()
            return answers  # type: ignore[return-value]
        deadline = self._clock.seconds() + self._budget
        backoff = self._first_backoff
        target = tracker.current_leader() or await tracker.find_leader()
        redirects = 0
        while True:
            remaining = deadline - self._clock.seconds()
            if target is not None and remaining > 0:
                outcomes = await self._attempt(target[1], exchange, pending, what,
                                               min(self._attempt_timeout, remaining))
                pending = self._settle(answers, pending, outcomes)
                if not pending:
                    return answers  # type: ignore[return-value]
                retries = [outcome for outcome in outcomes if isinstance(outcome, Retry)]
                redirect = next((outcome for outcome in outcomes if isinstance(outcome, Redirect)), None)
                if redirect is not None and not retries:
                    if redirect.leader_id != target[0] and redirects < len(tracker.replicas):
                        redirects += 1
                        target = tracker.note_leader_hint(redirect.leader_id, redirect.leader_url)
                        continue
                elif any(outcome.suspect for outcome in retries):
                    tracker.mark_failed(target[0])
                    if not (resend or all(outcome.unsent for outcome in retries)):
                        log.warn("{what} may have reached the {group} leader {leader_id}, which did not answer; "
                                 "not sent again", what=what, group=tracker.group, leader_id=target[0])
                        raise ApiError(503, f"The {tracker.group} leader did not answer {what}, which may or may "
                                            "not have been done; check before sending it again.",
                                       headers=RETRY_AFTER)
            redirects = 0
            if self._clock.seconds() + backoff >= deadline:
                log.warn("No {group} leader took {what} within {budget} s", group=tracker.group, what=what,
                         budget=self._budget)
                raise self._unreachable()
            await deferLater(self._clock, backoff)
            backoff = min(backoff * 2, self._max_backoff)
            target = await tracker.find_leader()

    @staticmethod
    def _settle(answers: list[tuple[int, dict[str, Any]] | None], pending: list[int],
                outcomes: list[Outcome]) -> list[int]:
        """Keep the final answers among ``outcomes`` (one per pending call); the calls still pending."""
        still = []
        for position, outcome in zip(pending, outcomes):
            if isinstance(outcome, Final):
                answers[position] = (outcome.status, outcome.payload)
            else:
                still.append(position)
        return still

    async def _attempt(self, url: str, exchange: Exchange, positions: list[int], what: str,
                       timeout: float) -> list[Outcome]:
        try:
            answers = await exchange(url, timeout, positions)
        except CancelledError:
            raise
        except Exception as error:
            log.info("{what} at {url} failed: {error}", what=what, url=url, group=self._leadership.group,
                     error=error)
            return [Retry(suspect=True, unsent=isinstance(error, ConnectError))] * len(positions)
        return [classify(status, payload) for status, payload in answers]
