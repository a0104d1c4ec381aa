"""What the core and log unit tests share: a core with a fixed seed, entries, messages,
and the node's Ready loop done by hand."""

from __future__ import annotations

import random
from typing import Any

from toystore.raft.core import RaftCore
from toystore.raft.messages import Entry, Message, MessageType, Ready


def make(node_id: int = 1, peers: tuple[int, ...] = (1, 2, 3), **options: Any) -> RaftCore:
    """A core with a fixed seed; the given log and hard state are its persisted state."""
    return RaftCore(node_id, peers, rng=random.Random(7), **options)


def entries(first: int, *terms: int) -> list[Entry]:
    """Entries from index ``first`` on, the i-th with the i-th term."""
    return [Entry(index, term, f"e{index}") for index, term in enumerate(terms, start=first)]


def msg(kind: MessageType, sender: int, to: int, term: int, **fields: Any) -> Message:
    return Message(kind, sender, to, term, **fields)


def take(core: RaftCore) -> Ready:
    """Take one Ready and report it done, as the node would."""
    assert core.has_ready()
    ready = core.ready()
    core.advance(ready)
    return ready


def sent(core: RaftCore) -> list[Message]:
    """Do every pending Ready; :return: the messages they held."""
    out: list[Message] = []
    while core.has_ready():
        out.extend(take(core).messages)
    return out
