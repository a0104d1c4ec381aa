"""How the bench starts etcd: three loopback members that know each other, fsync left on."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from toystore.bench.etcd import member_argv, put_job


def test_each_member_listens_on_its_own_ports_and_names_every_peer(tmp_path: Path) -> None:
    argv = member_argv("/usr/bin/etcd", 1, [2379, 2380, 2381], [2390, 2391, 2392], tmp_path)
    options = dict(zip(argv[1::2], argv[2::2]))
    assert options["--name"] == "m2" and options["--data-dir"] == str(tmp_path / "m2")
    assert options["--listen-client-urls"] == "http://127.0.0.1:2380"
    assert options["--initial-advertise-peer-urls"] == "http://127.0.0.1:2391"
    assert options["--initial-cluster"] == ("m1=http://127.0.0.1:2390,m2=http://127.0.0.1:2391,"
                                            "m3=http://127.0.0.1:2392")
    assert not any("fsync" in arg for arg in argv)  # etcd's default: every commit fsynced


def test_a_put_is_the_json_gateways_shape() -> None:
    job = put_job("http://127.0.0.1:2379", "k")
    assert job.url == "http://127.0.0.1:2379/v3/kv/put" and job.method == "POST"
    body = json.loads(job.body or b"")
    assert base64.b64decode(body["key"]) == b"k" and len(base64.b64decode(body["value"])) == 64
