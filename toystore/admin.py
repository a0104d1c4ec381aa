"""``python -m toystore.admin``: see and change the order group's membership.

    python -m toystore.admin members
    python -m toystore.admin add 4 http://10.0.0.14:8104
    python -m toystore.admin remove 3
    python -m toystore.admin replace 3 4 http://10.0.0.14:8104   # add 4, then remove 3

``--replicas`` lists where to start looking, as ``TOYSTORE_ORDER_REPLICAS`` does (its
default); the leader is found from there (health checks, then 421 hints), and the
request is sent to it with ``TOYSTORE_CLUSTER_TOKEN``. It exits 0 once the change is
committed, printing the members then; 1 with one sentence saying why not.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn, Sequence

from twisted.python import usage

from toystore.cluster import http_json
from toystore.config import ORDER_REPLICAS_ENV, TOKEN_ENV, default_replicas, parse_replicas
from toystore.raft.members import CATCH_UP_TIMEOUT

#: Seconds for an answer to ``POST /members``: an add waits for the new server to catch up.
CHANGE_TIMEOUT = CATCH_UP_TIMEOUT + 30.0
MAX_REDIRECTS = 5


class AdminError(Exception):
    """Why the command failed, in one sentence for the operator."""


class Unreachable(AdminError):
    """A replica did not answer (others may)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = os.environ.get(TOKEN_ENV) or None
    try:
        replicas = parse_replicas(args.replicas) if args.replicas else default_replicas()
        if args.command == "members":
            members = current_members(replicas, token)
        elif args.command == "add":
            members = change(replicas, token, {"add": {"id": args.id, "url": args.url}})
        elif args.command == "remove":
            members = change(replicas, token, {"remove": args.id})
        else:
            change(replicas, token, {"add": {"id": args.new_id, "url": args.new_url}})
            members = change(replicas, token, {"remove": args.old_id})
    except (AdminError, usage.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(members_table(members))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error fails as every other: exit 1, one sentence."""
        self.exit(1, f"error: {message} (see python -m toystore.admin --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m toystore.admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default=os.environ.get(ORDER_REPLICAS_ENV, ""),
                        help=f"ID=URL,... where to start looking for the leader (default ${ORDER_REPLICAS_ENV})")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("members", help="print the committed members")
    add = commands.add_parser("add", help="add a server started with --join; it votes once it holds the log")
    add.add_argument("id", type=_member_id)
    add.add_argument("url")
    remove = commands.add_parser("remove", help="remove a server (the leader hands over first)")
    remove.add_argument("id", type=_member_id)
    replace = commands.add_parser("replace", help="add NEW_ID at NEW_URL, then remove OLD_ID")
    replace.add_argument("old_id", type=_member_id)
    replace.add_argument("new_id", type=_member_id)
    replace.add_argument("new_url")
    return parser


def _member_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a member id is a whole number from 1, not {text!r}")
    return int(text)


def current_members(replicas: dict[int, str], token: str | None) -> list[dict[str, Any]]:
    """The committed members, from the leader if one answers, else from any replica."""
    leader_url = find_leader(replicas, token)
    for url in [leader_url, *replicas.values()] if leader_url else replicas.values():
        try:
            status, body = _request("GET", f"{url}/members", token, timeout=2.0)
        except Unreachable:
            continue
        if status == 200:
            return body["data"]["members"]
    raise AdminError(f"no order replica of {_listing(replicas)} answered GET /members")


def change(replicas: dict[int, str], token: str | None, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``body`` to ``POST /members`` at the leader, following 421 hints; :return: the members."""
    url = find_leader(replicas, token)
    if url is None:
        raise AdminError(f"no order replica of {_listing(replicas)} knows a leader; is a majority up?")
    for _ in range(MAX_REDIRECTS):
        status, answer = _request("POST", f"{url}/members", token, body=body, timeout=CHANGE_TIMEOUT)
        if status == 200:
            return answer["data"]["members"]
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        hinted = error.get("leader_url")
        if status == 421 and isinstance(hinted, str) and hinted != url:
            url = hinted
            continue
        message = error.get("message") or f"the replica answered {status}"
        raise AdminError(f"{message} ({status} from {url})")
    raise AdminError(f"the leader kept moving; no change was made through {url}")


def find_leader(replicas: dict[int, str], token: str | None) -> str | None:
    """The URL of the replica that leads in the highest term, or the one most replicas name."""
    best: tuple[int, str] | None = None
    hinted: str | None = None
    for url in replicas.values():
        try:
            status, body = _request("GET", f"{url}/health_check", token, timeout=2.0)
        except Unreachable:
            continue
        data = body.get("data") if status == 200 else None
        if not isinstance(data, dict):
            continue
        if data.get("role") == "leader" and (best is None or data.get("term", 0) > best[0]):
            best = (data.get("term", 0), url)
        members = {m.get("id"): m.get("url") for m in data.get("members", []) if isinstance(m, dict)}
        hinted = hinted or members.get(data.get("leader_id"))
    return best[1] if best else hinted


def _request(method: str, url: str, token: str | None, *, body: Any = None, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        status, answer = http_json(method, url, token=token, body=body, timeout=timeout)
    except OSError as e:
        raise Unreachable(f"{url} did not answer: {getattr(e, 'reason', e)}") from None
    if status == 401:
        raise AdminError(f"{url} refused the cluster token; set {TOKEN_ENV} to the cluster's")
    return status, answer


def members_table(members: list[dict[str, Any]]) -> str:
    rows = [("ID", "URL", "ROLE")] + [(str(m["id"]), m["url"], "voter" if m["voter"] else "learner") for m in members]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _listing(replicas: dict[int, str]) -> str:
    return ", ".join(f"{i}={url}" for i, url in sorted(replicas.items()))


if __name__ == "__main__":
    raise SystemExit(main())
