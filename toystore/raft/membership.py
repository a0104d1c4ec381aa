"""A Raft group's membership: who votes, who only learns the log, and where each one is.

A :class:`Configuration` travels in the log as the data of a configuration entry, and in
snapshots. It changes one server at a time (Ongaro's dissertation, 4.1): a new server
joins as a learner, which receives the log but counts in no quorum, and is promoted to
voter once it holds the log; a server of either kind is removed. Any two majorities of
two successive configurations then overlap, so no change can make two leaders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urlsplit

#: Bounds on untrusted input, far above any real group.
MAX_MEMBERS = 64
MAX_ADDRESS_LENGTH = 512


class MembershipError(ValueError):
    """A change that the configuration in force does not allow (a member already present,
    or absent, or the last voter removed)."""


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One server of a group.

    :param id: its node id, >= 1.
    :param address: where its peers reach it (the base URL); opaque to the Raft core.
    :param voter: counted in elections and commits; False for a learner.
    """

    id: int
    address: str = ""
    voter: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.address, "voter": self.voter}


@dataclass(frozen=True, slots=True)
class Configuration:
    """A group's members, by ascending id; the empty one is a server that waits to be added."""

    members: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        ids = [member.id for member in self.members]
        if ids != sorted(set(ids)) or any(i < 1 for i in ids):
            raise ValueError(f"member ids must be distinct and >= 1, by ascending id: {ids}")

    @classmethod
    def of(cls, voters: Iterable[int], learners: Iterable[int] = (), addresses: dict[int, str] | None = None) -> Configuration:
        """The configuration of these ids, with ``addresses`` where known."""
        addresses = addresses or {}
        members = [Member(i, addresses.get(i, ""), True) for i in voters]
        members += [Member(i, addresses.get(i, ""), False) for i in learners]
        return cls(tuple(sorted(members)))

    @property
    def voters(self) -> frozenset[int]:
        return frozenset(member.id for member in self.members if member.voter)

    @property
    def learners(self) -> frozenset[int]:
        return frozenset(member.id for member in self.members if not member.voter)

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(member.id for member in self.members)

    def addresses(self) -> dict[int, str]:
        """``{id: address}`` of every member."""
        return {member.id: member.address for member in self.members}

    def member(self, node_id: int) -> Member | None:
        return next((member for member in self.members if member.id == node_id), None)

    # -- single-server changes ------------------------------------------------------------

    def with_learner(self, node_id: int, address: str) -> Configuration:
        """This one plus ``node_id`` as a learner. :raises MembershipError: if it is a member."""
        if node_id < 1:
            raise MembershipError(f"a member id is a whole number from 1, not {node_id}")
        if self.member(node_id) is not None:
            raise MembershipError(f"server {node_id} is a member already")
        if len(self.members) >= MAX_MEMBERS:
            raise MembershipError(f"a group holds at most {MAX_MEMBERS} members")
        return Configuration(tuple(sorted((*self.members, Member(node_id, address, False)))))

    def with_voter(self, node_id: int) -> Configuration:
        """This one with the learner ``node_id`` promoted. :raises MembershipError: if it is no learner."""
        member = self.member(node_id)
        if member is None or member.voter:
            raise MembershipError(f"server {node_id} is not a learner of the group")
        return Configuration(tuple(Member(m.id, m.address, True) if m.id == node_id else m for m in self.members))

    def without(self, node_id: int) -> Configuration:
        """This one less ``node_id``. :raises MembershipError: if absent, or the last voter."""
        member = self.member(node_id)
        if member is None:
            raise MembershipError(f"server {node_id} is not a member of the group")
        if member.voter and len(self.voters) == 1:
            raise MembershipError(f"server {node_id} is the group's last voter")
        return Configuration(tuple(m for m in self.members if m.id != node_id))

    def is_single_change_from(self, other: Configuration) -> bool:
        """Does this one differ from ``other`` by one server added as a learner, promoted, or removed?"""
        mine, theirs = set(self.members), set(other.members)
        added, gone = mine - theirs, theirs - mine
        if len(added) + len(gone) == 1:
            return all(not m.voter for m in added) and (not gone or bool(self.voters))
        if len(added) == len(gone) == 1:  # a promotion: the same member, now voting
            (new,), (old,) = added, gone
            return (new.id, new.address, new.voter, old.voter) == (old.id, old.address, True, False)
        return False

    # -- encoding ---------------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """The shape of ``GET /members``: ``[{"id", "url", "voter"}, ...]``."""
        return [member.to_json() for member in self.members]

    @classmethod
    def from_json(cls, value: Any) -> Configuration:
        """Parse and validate a list of members.

        :raises ValueError: naming the first problem.
        """
        if not isinstance(value, list) or len(value) > MAX_MEMBERS:
            raise ValueError(f"members must be a list of at most {MAX_MEMBERS}")
        members = []
        for item in value:
            if not isinstance(item, dict) or set(item) != {"id", "url", "voter"}:
                raise ValueError('a member is {"id": N, "url": "...", "voter": true|false}')
            node_id, address, voter = item["id"], item["url"], item["voter"]
            if type(node_id) is not int or not 1 <= node_id <= 2**31:
                raise ValueError("a member's id is a whole number from 1")
            if not isinstance(address, str) or len(address) > MAX_ADDRESS_LENGTH:
                raise ValueError(f"a member's url is a string of at most {MAX_ADDRESS_LENGTH} characters")
            if not isinstance(voter, bool):
                raise ValueError("a member's voter is true or false")
            members.append(Member(node_id, address, voter))
        members.sort()
        if len({m.id for m in members}) != len(members):
            raise ValueError("two members have one id")
        return cls(tuple(members))

    def encode(self) -> str:
        """The data of a configuration entry."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def decode(cls, data: str) -> Configuration:
        """:raises ValueError: when ``data`` is not an encoded configuration."""
        return cls.from_json(json.loads(data))  # a JSONDecodeError is a ValueError


def check_address(address: Any) -> str:
    """A member's URL as given by an operator. :raises MembershipError: when it is not ``http(s)://host:port``."""
    if not isinstance(address, str) or len(address) > MAX_ADDRESS_LENGTH:
        raise MembershipError(f"a member's url is a string of at most {MAX_ADDRESS_LENGTH} characters")
    parts = urlsplit(address)
    try:
        parts.port
    except ValueError:
        raise MembershipError(f"a member's url has no valid port: {address!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or (
            parts.port is None and ":" in parts.netloc.rsplit("]", 1)[-1]) or parts.query or parts.fragment:
        raise MembershipError(f"a member's url is http://host:port, not {address!r}")
    return address.rstrip("/")
