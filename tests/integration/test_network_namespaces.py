"""The cluster across network namespaces: every service on its own "host" with its own
address, so each talks to the others over a real (virtual) network, never loopback.

Topology, all made here and removed afterwards (try/finally), in a /24 of 10.213.0.0/16
that no interface of this machine uses yet:

    root namespace: veth tsh<tag> 10.213.X.1 ──┐
                                               ├─ bridge in namespace ts-<tag>-sw
    ts-<tag>-frontend  eth0 10.213.X.10 ───────┤
    ts-<tag>-order-N   eth0 10.213.X.(11+N) ───┤  (N = 1, 2, 3)
    ts-<tag>-catalog-N eth0 10.213.X.(20+N) ───┘  (the replicated catalog's members)

Each process runs the command line of its systemd unit in ``deploy/``. Root only; skipped with the reason when not root, without ``ip``, or when any setup step
fails. Before anything is sent, ``ip route get`` must show that every address is reached
through the veth made for it. Requests go only to the addresses assigned here, with no
proxy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import toystore
from toystore.cluster import twistd_command

ORDER_IDS = (1, 2, 3)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FRONTEND_PORT, CATALOG_PORT_BASE, ORDER_PORT_BASE = 8000, 8000, 8100


class SetupFailed(Exception):
    """A namespace, link, address or route could not be made as planned: the test skips."""


def ip(*args: str, namespace: str | None = None) -> str:
    """Run ``ip`` (inside ``namespace`` when given); its output, or SetupFailed."""
    argv = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise SetupFailed(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    """One service's namespace, its address and its process."""

    name: str  # frontend, catalog-N, order-N
    namespace: str
    address: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass
class NamespacedCluster:
    tag: str
    subnet: str  # "10.213.X"
    data_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # made so far, removed in reverse

    @property
    def switch(self) -> str:
        return f"ts-{self.tag}-sw"

    @property
    def root_veth(self) -> str:
        return f"tsh{self.tag}"

    @property
    def root_address(self) -> str:
        return f"{self.subnet}.1"

    def assigned(self) -> set[str]:
        return {host.address for host in self.hosts.values()}

    # -- network ------------------------------------------------------------------

    def plan(self) -> None:
        self.hosts["frontend"] = Host("frontend", f"ts-{self.tag}-frontend", f"{self.subnet}.10", FRONTEND_PORT)
        for i in ORDER_IDS:
            self.hosts[f"catalog-{i}"] = Host(f"catalog-{i}", f"ts-{self.tag}-catalog-{i}", f"{self.subnet}.{20 + i}",
                                              CATALOG_PORT_BASE + i)
            self.hosts[f"order-{i}"] = Host(f"order-{i}", f"ts-{self.tag}-order-{i}", f"{self.subnet}.{10 + i + 1}",
                                            ORDER_PORT_BASE + i)

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", namespace=name)

    def build(self) -> None:
        """The bridge, the root namespace's veth, and a namespace with a veth per service."""
        self._add_namespace(self.switch)
        ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        ip("link", "set", "br0", "up", namespace=self.switch)
        ip("link", "add", self.root_veth, "type", "veth", "peer", "name", "root", "netns", self.switch)
        ip("link", "set", "root", "master", "br0", "up", namespace=self.switch)
        ip("addr", "add", f"{self.root_address}/24", "dev", self.root_veth)
        ip("link", "set", self.root_veth, "up")
        for host in self.hosts.values():
            self._add_namespace(host.namespace)
            ip("link", "add", "eth0", "netns", host.namespace, "type", "veth",
               "peer", "name", host.name, "netns", self.switch)
            ip("link", "set", host.name, "master", "br0", "up", namespace=self.switch)
            ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
            ip("link", "set", "eth0", "up", namespace=host.namespace)

    def check_routes(self) -> None:
        """Every address is reached through our own veth: from the root namespace through
        tsh<tag>, from each service's namespace through its eth0."""
        for address in self.assigned():
            self._route_through(address, self.root_veth, None)
            for host in self.hosts.values():
                if host.address != address:
                    self._route_through(address, "eth0", host.namespace)

    @staticmethod
    def _route_through(address: str, device: str, namespace: str | None) -> None:
        route = ip("-o", "route", "get", address, namespace=namespace).split()
        if "dev" not in route or route[route.index("dev") + 1] != device:
            raise SetupFailed(f"the route to {address} in {namespace or 'the root namespace'} is not through "
                              f"{device}: {' '.join(route)}")

    # -- processes ----------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
        source_root = str(Path(toystore.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
        env["TOYSTORE_CLUSTER_TOKEN"] = self.token
        env["TOYSTORE_CATALOG_URL"] = ",".join(f"{i}={self.hosts[f'catalog-{i}'].url}" for i in ORDER_IDS)
        env["TOYSTORE_FRONTEND_URL"] = self.hosts["frontend"].url
        env["TOYSTORE_ORDER_REPLICAS"] = ",".join(f"{i}={self.hosts[f'order-{i}'].url}" for i in ORDER_IDS)
        return env

    def start(self, host: Host) -> None:
        argv = ["ip", "netns", "exec", host.namespace] + unit_command(host, self.data_dir)
        with open(self.data_dir / f"{host.name}.log", "ab") as log:
            # ip netns exec execs the command: the pid is the service's own
            host.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                            cwd=self.data_dir, start_new_session=True)

    def kill(self, host: Host) -> None:
        if host.process is not None and host.process.poll() is None:
            host.process.send_signal(signal.SIGKILL)
            host.process.wait(10)

    def stop_all(self) -> None:
        for host in self.hosts.values():
            if host.process is not None and host.process.poll() is None:
                host.process.terminate()
        for host in self.hosts.values():
            if host.process is not None:
                try:
                    host.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill(host)

    def remove_network(self) -> None:
        """Every namespace made (their veths go with them), then the root veth if left."""
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.namespaces.clear()
        if subprocess.run(["ip", "link", "show", self.root_veth], capture_output=True).returncode == 0:
            subprocess.run(["ip", "link", "del", self.root_veth], capture_output=True)

    # -- HTTP, only to our own addresses -----------------------------------------

    def request(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
        address = url.split("//", 1)[1].split(":", 1)[0]
        assert address in self.assigned(), f"{url} is not one of the addresses this test assigned"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json", **(headers or {})})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def health(self, replica_id: int) -> dict[str, Any] | None:
        try:
            status, body = self.request("GET", self.hosts[f"order-{replica_id}"].url + "/health_check", timeout=1.0)
        except OSError:
            return None
        return body["data"] if status == 200 else None

    def leader(self, among: tuple[int, ...] = ORDER_IDS) -> int | None:
        leaders = [(health["term"], i) for i in among if (health := self.health(i)) and health["role"] == "leader"]
        return max(leaders)[1] if leaders else None

    def answers(self, name: str, path: str) -> bool:
        try:
            return self.request("GET", self.hosts[name].url + path, timeout=1.0)[0] == 200
        except OSError:
            return False


def unit_command(host: Host, data_dir: Path) -> list[str]:
    """The ``ExecStart`` of the host's systemd unit in ``deploy/``, so the test runs what a
    deployment runs: with our twistd, ``data_dir`` for /var/lib/toystore, the replica id
    for ``%i``, and the host's own address for the units' ``--interface 0.0.0.0``."""
    role, _, replica_id = host.name.partition("-")
    unit = DEPLOY / (f"toystore-{role}@.service" if replica_id else f"toystore-{role}.service")
    [line] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/opt/toystore/venv/bin/twistd" and argv[argv.index("--interface") + 1] == "0.0.0.0", line
    argv[argv.index("--interface") + 1] = host.address
    argv = [part.replace("%i", replica_id).replace("/var/lib/toystore", str(data_dir)) for part in argv[1:]]
    return twistd_command() + argv


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s; logs in {logs}")
        time.sleep(0.1)
    return value


def free_subnet() -> str:
    """A 10.213.X prefix that no interface of the root namespace has an address in."""
    used = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    candidates = [f"10.213.{x}" for x in random.sample(range(1, 255), 254)]
    for subnet in candidates:
        if f" {subnet}." not in used:
            return subnet
    raise SetupFailed("every 10.213.X.0/24 is in use here")


@pytest.fixture
def namespaced_cluster(tmp_path: Path) -> Iterator[NamespacedCluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces and veth pairs")
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2)")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cluster = NamespacedCluster(tag=f"{random.randrange(16**4):04x}", subnet="", data_dir=data_dir)
    try:
        try:
            cluster.subnet = free_subnet()
            cluster.plan()
            cluster.build()
            cluster.check_routes()
        except SetupFailed as failure:
            pytest.skip(f"network namespace setup failed: {failure}")
        yield cluster
    finally:
        cluster.stop_all()
        cluster.remove_network()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"ts-{cluster.tag}-" not in left, f"namespaces left behind: {left}"


def test_orders_and_leader_failover_across_network_namespaces(namespaced_cluster: NamespacedCluster) -> None:
    cluster = namespaced_cluster
    logs = cluster.data_dir
    hosts = cluster.hosts
    for name in [f"catalog-{i}" for i in ORDER_IDS] + [f"order-{i}" for i in ORDER_IDS] + ["frontend"]:
        cluster.start(hosts[name])
    for i in ORDER_IDS:
        wait_for(lambda: cluster.answers(f"catalog-{i}", "/health"), 30, f"catalog member {i} up", logs)
    wait_for(lambda: cluster.answers("frontend", "/health"), 30, "the frontend up", logs)
    wait_for(cluster.leader, 30, "an order leader", logs)
    frontend = hosts["frontend"].url

    def place(name: str, quantity: int, timeout: float) -> int:
        """An order through the frontend, retried with its key on 503 or no answer."""
        key = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = cluster.request("POST", frontend + "/orders", {"name": name, "quantity": quantity},
                                               headers={"Idempotency-Key": key}, timeout=5.0)
            except OSError as error:
                status, body = 0, {"error": str(error)}
            if status == 200:
                return int(body["data"]["order_number"])
            assert status in (0, 503) and time.monotonic() < deadline, f"order failed: {status} {body}"
            time.sleep(0.2)

    first = place("Tux", 2, timeout=15)
    assert cluster.request("GET", f"{frontend}/orders/{first}") == (
        200, {"data": {"number": first, "name": "Tux", "quantity": 2}})
    status, product = cluster.request("GET", f"{frontend}/products/Tux")
    assert status == 200 and product["data"]["quantity"] == 98

    old_leader = cluster.leader()
    assert old_leader is not None
    cluster.kill(hosts[f"order-{old_leader}"])
    survivors = tuple(i for i in ORDER_IDS if i != old_leader)
    new_leader = wait_for(lambda: cluster.leader(survivors), 10, "a new leader among the survivors", logs)
    assert new_leader != old_leader

    second = place("Whale", 1, timeout=10)
    assert second == first + 1
    for number, name, quantity in ((first, "Tux", 2), (second, "Whale", 1)):
        assert cluster.request("GET", f"{frontend}/orders/{number}") == (
            200, {"data": {"number": number, "name": name, "quantity": quantity}})
    expected = [{"number": first, "name": "Tux", "quantity": 2}, {"number": second, "name": "Whale", "quantity": 1}]

    def committed(replica_id: int) -> list[dict[str, Any]]:
        orders = cluster.request("GET", hosts[f"order-{replica_id}"].url + "/orders_since")[1]["data"]["orders"]
        return [{key: order[key] for key in ("number", "name", "quantity")} for order in orders]

    for i in survivors:  # both orders committed on each surviving host
        wait_for(lambda: committed(i) == expected, 5, f"order-{i} to hold both orders", logs)
