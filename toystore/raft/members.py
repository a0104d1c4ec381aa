"""``GET/POST /members`` of a Raft group, for any user of the library (DESIGN.md,
"Membership change"): the committed configuration, and one change at a time.

``POST /members`` takes ``{"add": {"id": N, "url": "http://host:port"}}`` or
``{"remove": N}`` at the leader, and answers once the change is committed, with the
members then; an added server first catches up as a learner and is promoted once it
holds the log. Errors: 400 for a bad body or an id already present (absent), 421 off the
leader (with its hint), 409 while another change is under way, 504 when a learner did
not catch up in time (it is removed again: membership is unchanged), 503 when leadership
was lost before the change committed (its outcome is not known: ask ``GET /members``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from toystore.http import ApiError
from toystore.raft.core import ChangeInProgress, NotLeader
from toystore.raft.membership import Configuration, MembershipError, check_address
from toystore.raft.messages import Role
from toystore.raft.node import CatchUpTimedOut, ProposalDropped, RaftNode

#: Seconds a new server has to catch up with the log before it is removed again: a
#: snapshot of a million orders takes about 13 s on loopback.
CATCH_UP_TIMEOUT = 120.0


def members_answer(config: Configuration) -> dict[str, Any]:
    """The body of ``GET /members``."""
    return {"members": config.to_json()}


async def change_members(node: RaftNode, body: Mapping[str, Any], not_leader: Callable[[int], ApiError],
                         catch_up_timeout: float = CATCH_UP_TIMEOUT) -> dict[str, Any]:
    """Do the change that ``body`` asks for on ``node``; the answer of ``POST /members``.

    :param not_leader: the 421 error naming a leader (by id; 0 when unknown).
    :raises ApiError: as the module says.
    """
    add, remove = _parse(body)
    core = node.core
    if core.role is not Role.LEADER:
        raise not_leader(core.leader_id)
    try:
        if add is not None:
            config = await node.add_member(*add, catch_up_timeout=catch_up_timeout)
        else:
            assert remove is not None
            config = await node.remove_member(remove)
    except NotLeader as e:
        raise not_leader(e.leader_id) from None
    except MembershipError as e:
        raise ApiError(400, _sentence(e) + ".") from None
    except ChangeInProgress as e:
        raise ApiError(409, f"A membership change is under way ({e}); retry once it is done.",
                       headers={"Retry-After": "1"}) from None
    except CatchUpTimedOut as e:
        raise ApiError(504, _sentence(e) + "; membership is unchanged.") from None
    except ProposalDropped:
        raise ApiError(503, "Leadership changed before the change committed; its outcome is not known yet: "
                       "see GET /members.", headers={"Retry-After": "1"}) from None
    return members_answer(config)


def _parse(body: Mapping[str, Any]) -> tuple[tuple[int, str] | None, int | None]:
    """``(id, url)`` to add, or the id to remove. :raises ApiError: 400."""
    if set(body) == {"add"}:
        add = body["add"]
        if not isinstance(add, dict) or set(add) != {"id", "url"}:
            raise ApiError(400, '"add" is {"id": N, "url": "http://host:port"}.')
        try:
            return (_member_id(add["id"]), check_address(add["url"])), None
        except MembershipError as e:
            raise ApiError(400, _sentence(e) + ".") from None
    if set(body) == {"remove"}:
        return None, _member_id(body["remove"])
    raise ApiError(400, 'The body is {"add": {"id": N, "url": "http://host:port"}} or {"remove": N}.')


def _member_id(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 2**31:
        raise ApiError(400, "A member id is a whole number from 1.")
    return value


def _sentence(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:]
