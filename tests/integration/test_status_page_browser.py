"""The frontend's status page in a real browser: headless Chromium (Debian's ``chromium``)
loads ``GET /`` from a real cluster, runs its polling script, and the rendered DOM shows the
ten toys, the saga's backlog, and three order replicas and three catalog members, one of each
leading. Skipped where chromium is not installed."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

import pytest

from toystore.cluster import LocalCluster

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


class Rows(HTMLParser):
    """The ``data-*`` attributes of every table row the page's script drew."""

    def __init__(self) -> None:
        super().__init__()
        self.toys: dict[str, str] = {}
        self.replicas: dict[str, str] = {}
        self.catalog_members: dict[str, str] = {}
        self.updated = False
        self.held: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body" and found.get("data-updated") == "yes":
            self.updated = True
        if found.get("id") == "backlog":
            self.held = found.get("data-held")
        if tag != "tr":
            return
        if found.get("data-toy") is not None:
            self.toys[found["data-toy"] or ""] = found.get("data-quantity") or ""
        if found.get("data-replica") is not None:
            rows = self.catalog_members if found.get("data-group") == "catalog" else self.replicas
            rows[found["data-replica"] or ""] = found.get("data-role") or ""


def rendered_dom(url: str, profile: Path) -> str:
    """The DOM after a few seconds of the page's (virtual) time, so its polls have run."""
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=4000", "--dump-dom", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_status_page_shows_toys_and_replicas_in_chromium(
        start_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    cluster = start_cluster(replicas=3, initial_stock=40, catalog_members=3)
    rows = Rows()
    rows.feed(rendered_dom(cluster.frontend_url + "/", tmp_path / "chromium-profile"))
    assert rows.updated, "the page's script never drew a status"
    assert sorted(rows.toys) == sorted(["Tux", "Whale", "Elephant", "Dolphin", "Fox", "Python", "Lego",
                                        "Monopoly", "Frisbee", "Marbles"])
    assert set(rows.toys.values()) == {"40"}
    assert rows.held == "0"  # no order yet, so no reservation held
    assert sorted(rows.replicas) == ["1", "2", "3"]
    # Which one leads may move (the frontend prefers the highest id), but one does.
    assert sorted(rows.replicas.values()) == ["follower", "follower", "leader"]
    assert sorted(rows.catalog_members) == ["1", "2", "3"]
    assert sorted(rows.catalog_members.values()) == ["follower", "follower", "leader"]
