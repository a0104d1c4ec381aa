"""The local cluster's ports: a load client's outgoing connections can never take one."""

import socket

import pytest

from toystore import cluster as cluster_module
from toystore.cluster import ClusterConfig, LocalCluster, ephemeral_port_range, free_ports


def test_ports_lie_outside_the_range_outgoing_connections_use():
    low, high = ephemeral_port_range()
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert not any(low <= port <= high for port in ports)


def test_a_port_is_handed_out_once_even_before_anyone_binds_it():
    first, second = set(free_ports(100)), set(free_ports(100))
    assert not first & second


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_ports(1)[0]))
    listener.listen()
    try:
        taken = listener.getsockname()[1]
        # A range of ten around it, none handed out yet: the nine others are handed out, never it.
        monkeypatch.setenv("TOYSTORE_PORTS", f"{taken - 4}-{taken + 5}")
        monkeypatch.setattr(cluster_module, "_PORTS_HANDED_OUT", set())
        assert sorted(free_ports(9)) == [port for port in range(taken - 4, taken + 6) if port != taken]
        with pytest.raises(OSError):
            free_ports(1)
    finally:
        listener.close()


def test_a_start_that_times_out_says_what_each_process_last_logged(tmp_path):
    cluster = LocalCluster(ClusterConfig(data_dir=tmp_path))
    cluster.log_dir.mkdir(parents=True)
    cluster.processes["catalog"].log_path.write_text("starting\nCannot listen: Address already in use\n")
    with pytest.raises(TimeoutError) as failure:
        cluster.wait_for(lambda: False, 0, "catalog up")
    message = str(failure.value)
    assert "catalog up not within 0 s" in message
    assert "--- catalog (not started)\nstarting\nCannot listen: Address already in use" in message


def test_a_process_given_a_range_takes_its_ports_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOYSTORE_PORTS", "21000-21999")
    ports = free_ports(30)
    assert all(21000 <= port <= 21999 for port in ports)
