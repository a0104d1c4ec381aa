"""The records that flow in and out of :class:`~toystore.raft.core.RaftCore`.

Messages arrive over HTTP from peers, so :meth:`Message.from_json` validates every
field and raises :class:`ValueError` on anything malformed; everything else here is a
plain frozen record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from toystore.raft.membership import Configuration

#: The largest integer a peer may send (an index or a term); bounds arithmetic on input.
MAX_INT = 2**63 - 1
#: Bounds on untrusted input, far above what a correct peer sends.
MAX_ENTRIES_PER_MESSAGE = 10_000
MAX_CONTEXT_LENGTH = 1024


class MessageType(enum.Enum):
    """The kinds of Raft message; the value is the wire name."""

    APPEND = "append"
    APPEND_RESP = "append_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    TIMEOUT_NOW = "timeout_now"
    TRUNCATE = "truncate"
    SNAPSHOT = "snapshot"


# What a node says only in reply to a peer's message; these ride back on its request.
ANSWERS = frozenset({MessageType.APPEND_RESP, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP,
                     MessageType.HEARTBEAT_RESP})


class Role(enum.Enum):
    """The role a Raft node plays in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.Enum):
    """What an entry's data is; the value is the wire and storage name."""

    NORMAL = "normal"  # the application's (opaque to the library)
    CONFIG = "config"  # a :class:`~toystore.raft.membership.Configuration`, encoded


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.

    :param index: position in the log, from 1.
    :param term: the term of the leader that created it.
    :param data: ``""`` for a leader's no-op, otherwise an opaque application string, or
        for a configuration entry the configuration it puts in force.
    """

    index: int
    term: int
    data: str
    kind: EntryKind = EntryKind.NORMAL

    @property
    def configuration(self) -> Configuration | None:
        """The configuration a configuration entry holds; None for other entries."""
        return Configuration.decode(self.data) if self.kind is EntryKind.CONFIG else None

    def to_json(self) -> dict[str, Any]:
        """:return: a JSON-ready dict."""
        value: dict[str, Any] = {"index": self.index, "term": self.term, "data": self.data}
        if self.kind is not EntryKind.NORMAL:
            value["kind"] = self.kind.value
        return value

    @classmethod
    def from_json(cls, value: Any) -> Entry:
        """Parse and validate an entry.

        :raises ValueError: on a missing, extra or ill-typed field, or a configuration
            entry that holds no configuration.
        """
        fields = _fields(value, "entry", required=("index", "term", "data"), optional=("kind",))
        data = fields["data"]
        if not isinstance(data, str):
            raise ValueError("entry field 'data' must be a string")
        try:
            kind = EntryKind(fields.get("kind", EntryKind.NORMAL.value))
        except (ValueError, TypeError):
            raise ValueError(f"unknown entry kind {fields.get('kind')!r}") from None
        entry = cls(index=_int(fields, "index", minimum=1), term=_int(fields, "term", minimum=1), data=data, kind=kind)
        if kind is EntryKind.CONFIG:
            try:
                entry.configuration
            except ValueError as e:
                raise ValueError(f"a configuration entry holds no configuration: {e}") from None
        return entry


@dataclass(frozen=True, slots=True)
class Message:
    """A one-way Raft message.

    Fields by type (unused fields stay at their defaults):

    - ``APPEND``: ``index``/``log_term`` = the entry preceding ``entries``,
      ``commit`` = the leader's commit index.
    - ``APPEND_RESP``: ``index`` = the last index now known to match (accepted) or the
      rejected ``APPEND``'s ``index``; on reject, ``reject_hint`` = the index to retry
      from and ``conflict_term`` = the responder's term there. Always ``log_term`` /
      ``commit`` = the responder's last log term / last log index, so a leader can see
      an outdated suffix worth a ``TRUNCATE``.
    - ``VOTE``/``PRE_VOTE``: ``index``/``log_term`` = the candidate's last entry,
      ``context`` = ``"transfer"`` for a leadership transfer.
    - ``VOTE_RESP``/``PRE_VOTE_RESP``: ``reject``.
    - ``HEARTBEAT``: ``commit`` = min(the follower's match index, the leader's commit);
      ``context`` = a pending ReadIndex request, echoed by ``HEARTBEAT_RESP``.
    - ``HEARTBEAT_RESP``: ``context``; ``reject`` when the responder's log ends before
      the heartbeat's ``commit`` (it lost its disk), ``reject_hint`` = its last index.
    - ``TRUNCATE``: ``index`` = the leader's last index; older-term entries past it go.
    - ``SNAPSHOT``: ``index``/``log_term`` = the last entry that the leader's snapshot
      covers, ``config`` = the configuration in force there; the snapshot itself travels
      beside the message (the hosts' business).
    - ``TIMEOUT_NOW``: only ``term``.
    """

    type: MessageType
    sender: int
    to: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    conflict_term: int = 0
    context: str = ""
    config: Configuration | None = None

    def to_json(self) -> dict[str, Any]:
        """:return: a JSON-ready dict that :meth:`from_json` accepts."""
        value: dict[str, Any] = {
            "type": self.type.value,
            "sender": self.sender,
            "to": self.to,
            "term": self.term,
            "log_term": self.log_term,
            "index": self.index,
            "entries": [entry.to_json() for entry in self.entries],
            "commit": self.commit,
            "reject": self.reject,
            "reject_hint": self.reject_hint,
            "conflict_term": self.conflict_term,
            "context": self.context,
        }
        if self.config is not None:
            value["config"] = self.config.to_json()
        return value

    @classmethod
    def from_json(cls, value: Any) -> Message:
        """Parse and validate a message from a peer.

        :raises ValueError: naming the first problem found.
        """
        fields = _fields(
            value,
            "message",
            required=("type", "sender", "to", "term"),
            optional=("log_term", "index", "entries", "commit", "reject", "reject_hint", "conflict_term", "context",
                      "config"),
        )
        try:
            kind = MessageType(fields["type"])
        except (ValueError, TypeError):
            raise ValueError(f"unknown message type {fields['type']!r}") from None
        reject = fields.get("reject", False)
        if not isinstance(reject, bool):
            raise ValueError("message field 'reject' must be a boolean")
        context = fields.get("context", "")
        if not isinstance(context, str) or len(context) > MAX_CONTEXT_LENGTH:
            raise ValueError(f"message field 'context' must be a string of at most {MAX_CONTEXT_LENGTH} characters")
        index = _int(fields, "index")
        term = _int(fields, "term")
        config = None
        if "config" in fields:
            if kind is not MessageType.SNAPSHOT:
                raise ValueError(f"a {kind.value} message carries no configuration")
            config = Configuration.from_json(fields["config"])
        return cls(
            type=kind,
            sender=_int(fields, "sender", minimum=1),
            to=_int(fields, "to", minimum=1),
            term=term,
            log_term=_int(fields, "log_term"),
            index=index,
            entries=_entries(fields.get("entries", []), kind, index, term),
            commit=_int(fields, "commit"),
            reject=reject,
            reject_hint=_int(fields, "reject_hint"),
            conflict_term=_int(fields, "conflict_term"),
            context=context,
            config=config,
        )


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent.

    :param vote: the candidate voted for in ``term``; 0 = none (node ids are >= 1).
    """

    term: int = 0
    vote: int = 0
    commit: int = 0

    def to_json(self) -> dict[str, Any]:
        """:return: a JSON-ready dict."""
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_json(cls, value: Any) -> HardState:
        """Parse and validate a stored hard state.

        :raises ValueError: on a missing, extra or ill-typed field.
        """
        fields = _fields(value, "hard state", required=("term", "vote", "commit"), optional=())
        return cls(term=_int(fields, "term"), vote=_int(fields, "vote"), commit=_int(fields, "commit"))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What the log needs to know of a snapshot: the last entry whose effect it holds, and
    the configuration in force there (None only in a snapshot made before membership
    changes existed: the host then knows the members)."""

    index: int
    term: int
    config: Configuration | None = None


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (role and known leader; 0 = unknown)."""

    role: Role
    leader_id: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex request: reads are linearizable once ``index`` is applied."""

    context: str
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the node, to be done in this sequence: persist, send, apply, advance.

    :param snapshot: a leader's snapshot that replaces the log, ``None`` otherwise. Before
        anything else, the node restores its state machine from the snapshot it received
        with these (index, term) and makes it durable in place of its whole stored log;
        ``entries`` and ``committed_entries`` then follow it.
    :param hard_state: to persist; ``None`` when unchanged.
    :param entries: to persist; when ``entries[0].index`` is not past the last
        persisted index, storage first deletes every entry from ``entries[0].index`` on.
    :param committed_entries: to apply, in log sequence, after persisting.
    :param messages: to send only once ``hard_state`` and ``entries`` are durable.
    :param read_states: confirmed ReadIndex requests.
    :param soft_state: the new role and leader; ``None`` when unchanged.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    soft_state: SoftState | None
    snapshot: SnapshotMeta | None = None


def _fields(value: Any, what: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> Mapping[str, Any]:
    """Check that ``value`` is an object with exactly the allowed keys."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    missing = [name for name in required if name not in value]
    if missing:
        raise ValueError(f"{what} lacks field {missing[0]!r}")
    unknown = sorted(set(value) - set(required) - set(optional), key=str)
    if unknown:
        raise ValueError(f"{what} has unknown field {unknown[0]!r}")
    return value


def _int(fields: Mapping[str, Any], name: str, *, minimum: int = 0) -> int:
    """Read an optional integer field in ``[minimum, MAX_INT]`` (booleans refused)."""
    value = fields.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be an integer")
    if not minimum <= value <= MAX_INT:
        raise ValueError(f"field {name!r} must be between {minimum} and {MAX_INT}")
    return value


def _entries(value: Any, kind: MessageType, index: int, term: int) -> tuple[Entry, ...]:
    """Parse the entries of a message: only APPEND carries them, contiguous after ``index``."""
    if not isinstance(value, list):
        raise ValueError("message field 'entries' must be a list")
    if value and kind is not MessageType.APPEND:
        raise ValueError(f"a {kind.value} message carries no entries")
    if len(value) > MAX_ENTRIES_PER_MESSAGE:
        raise ValueError(f"a message carries at most {MAX_ENTRIES_PER_MESSAGE} entries")
    entries = tuple(Entry.from_json(item) for item in value)
    previous_term = 0
    for offset, entry in enumerate(entries, start=1):
        if entry.index != index + offset:
            raise ValueError("message entries must be contiguous and follow field 'index'")
        if not previous_term <= entry.term <= term:
            raise ValueError("message entry terms must not decrease nor pass the message's term")
        previous_term = entry.term
    return entries
