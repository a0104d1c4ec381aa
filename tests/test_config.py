"""Where the catalog is: ``TOYSTORE_CATALOG_URL`` and ``--catalog-url`` name one catalog
alone or the members of a replicated catalog, for the order replicas and the frontends."""

from __future__ import annotations

import pytest
from twisted.python import usage

from toystore.config import parse_catalog_address

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
