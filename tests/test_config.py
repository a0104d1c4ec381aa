"""Where the catalog is: ``TOYSTORE_CATALOG_URL`` and ``--catalog-url`` name one catalog
alone or the members of a replicated catalog, for the order replicas and the frontends."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python import usage

from toystore.config import parse_catalog_address
from toystore.frontend import tap as frontend_tap
from toystore.order import tap as order_tap

MEMBERS = "1=http://127.0.0.1:8001,2=http://127.0.0.1:8002/,3=http://10.0.0.3:8003"


def test_one_url_is_a_lone_catalog() -> None:
    assert parse_catalog_address(" http://127.0.0.1:8001/ ") == "http://127.0.0.1:8001"


def test_id_equals_url_pairs_are_the_members_of_a_replicated_catalog() -> None:
    assert parse_catalog_address(MEMBERS) == {1: "http://127.0.0.1:8001", 2: "http://127.0.0.1:8002",
                                              3: "http://10.0.0.3:8003"}
    assert parse_catalog_address("1=http://127.0.0.1:8001") == {1: "http://127.0.0.1:8001"}  # a group of one


@pytest.mark.parametrize("text", ["", "catalog", "ftp://127.0.0.1:8001", "one=http://127.0.0.1:8001",
                                  "0=http://127.0.0.1:8001", "1=ftp://x", "1=", "http://a:1,2=http://b:2",
                                  "1=http://a:1,http://b:2"])
def test_anything_else_is_a_usage_error_naming_both_forms(text: str) -> None:
    with pytest.raises(usage.UsageError) as error:
        parse_catalog_address(text)
    message = str(error.value)
    assert "one URL (http://127.0.0.1:8001) or its members as 1=http://127.0.0.1:8001,2=" in message
    assert "is not" in message  # and what was wrong with it


def _options(role: Any, args: list[str], env: dict[str, str]) -> usage.Options:
    options = role.Options()
    options.env = env
    options.parseOptions(args)
    return options


ROLES = [(frontend_tap, []), (order_tap, ["--id", "1"])]


@pytest.mark.parametrize(("role", "args"), ROLES)
def test_both_clients_of_the_catalog_take_either_form_from_the_environment_or_the_option(
        role: Any, args: list[str]) -> None:
    assert _options(role, args, {})["catalog-url"] == "http://127.0.0.1:8001"
    assert _options(role, args, {"TOYSTORE_CATALOG_URL": MEMBERS})["catalog-url"] == parse_catalog_address(MEMBERS)
    assert _options(role, [*args, "--catalog-url", "http://10.0.0.9:9001"],
                    {"TOYSTORE_CATALOG_URL": MEMBERS})["catalog-url"] == "http://10.0.0.9:9001"
    assert _options(role, [*args, "--catalog-url", "2=http://10.0.0.9:9002"], {})["catalog-url"] == {
        2: "http://10.0.0.9:9002"}


@pytest.mark.parametrize(("role", "args"), ROLES)
def test_a_bad_catalog_address_stops_either_client_at_start(role: Any, args: list[str]) -> None:
    with pytest.raises(usage.UsageError, match="The catalog is one URL"):
        _options(role, args, {"TOYSTORE_CATALOG_URL": "1=http://127.0.0.1:8001,two=http://127.0.0.1:8002"})
