"""Run a whole local cluster: catalog, order replicas and frontend as twistd processes.

Used by ``./scripts/demo``, the integration and fault tests, and benchmarks. It is a
supervisor, not a service, so it is plain synchronous Python: processes, signals and
short HTTP polls. Every process gets the same generated token and one data folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import toystore
from toystore.faults.links import LinkSpec, link_name

ROLE_PLUGINS = {"catalog": "toystore-catalog", "frontend": "toystore-frontend", "order": "toystore-order"}


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' source ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_PORTS_HANDED_OUT: set[int] = set()
# "LOW-HIGH": the ports this process's clusters take, when several processes start clusters
# side by side (the test script's parallel streams): each its own range, so they never race.
PORTS_ENV = "TOYSTORE_PORTS"


def _candidate_ports() -> range:
    chosen = os.environ.get(PORTS_ENV)
    if chosen:
        low, _, high = chosen.partition("-")
        return range(int(low), int(high) + 1)
    low, high = ephemeral_port_range()
    return range(10000, low) if low > 12000 else range(high + 1, 65536)


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that are free now, chosen outside the ephemeral range.

    A port the kernel hands out for ``bind(0)`` is ephemeral: between our check and the
    service's bind, any outgoing connection (a load client opens hundreds) may take it as its
    source port. Below the ephemeral range only a listener can take it. A port is handed out
    once per process, so two clusters planned side by side never share one; processes that
    plan clusters at the same time get ranges of their own (``TOYSTORE_PORTS``).
    """
    candidates = _candidate_ports()
    ports: list[int] = []
    for port in random.sample(candidates, len(candidates)):
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            _PORTS_HANDED_OUT.update(ports)
            return ports
    raise OSError(f"not {count} free ports in {candidates}")


def twistd_command() -> list[str]:
    """twistd from the Python running us (a venv's bin/twistd, else the module)."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def http_json(method: str, url: str, *, token: str | None = None, body: Any = None,
              timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One JSON request; (status, body). Connection failures raise OSError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload or b"{}")
        except ValueError:
            return e.code, {"raw": payload.decode("utf-8", "replace")}


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class ClusterConfig:
    data_dir: Path
    replicas: int = 3
    cache_size: int = 8
    db_delay: float = 0.0
    replication: str = "raft"
    snapshot_every: int | None = None  # Raft's --snapshot-every (replicas and catalog members); None: default
    initial_stock: int = 100
    restock_interval: float = 10.0
    restock_to: int = 100
    interface: str = "127.0.0.1"
    base_port: int | None = None  # None: free ports; else frontend base, catalog (member i) base+1 (base+i),
    #                               replica i base+100+i
    proxied: bool = False  # replicas and the frontend reach each replica through a fault proxy link
    catalog_members: int = 1  # 1: a catalog alone; more: a replicated catalog of that many members
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


class LocalCluster:
    """Starts, inspects, faults and stops a local cluster.

    ``ports`` maps process names (``catalog`` or ``catalog-1``..., ``frontend``, ``order-1``...)
    to ports. With ``catalog_members`` above 1, ``"catalog"`` in :meth:`get` and :attr:`catalog_url`
    means the catalog member that leads now.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.log_dir = self.data_dir / "logs"
        names = self.catalog_names + ["frontend"] + [f"order-{i}" for i in range(1, config.replicas + 1)]
        if config.base_port is None:
            self.ports = dict(zip(names, free_ports(len(names))))
        else:
            base = config.base_port
            catalogs = {"catalog": base + 1} if not self.catalog_replicated else {
                f"catalog-{i}": base + i for i in self.catalog_ids}
            self.ports = {"frontend": base, **catalogs,
                          **{f"order-{i}": base + 100 + i for i in range(1, config.replicas + 1)}}
        self._replica_ids = list(range(1, config.replicas + 1))
        self.links: dict[str, LinkSpec] = {}
        if config.proxied:
            self._plan_proxy()
            names = ["proxy"] + names
        self.processes: dict[str, Process] = {}
        for name in names:
            self.processes[name] = Process(name, self._argv(name), self.log_dir / f"{name}.log")

    def _plan_proxy(self) -> None:
        """One link per (source, replica) pair, from every other replica and from the frontend,
        one from each replica to each catalog member, and one between each two catalog members."""
        order_names = [f"order-{i}" for i in self.replica_ids]
        pairs = [(source, destination) for destination in order_names
                 for source in ["frontend"] + order_names if source != destination]
        pairs += [(source, catalog) for catalog in self.catalog_names for source in order_names]
        pairs += [(source, destination) for destination in self.catalog_names for source in self.catalog_names
                  if source != destination]
        ports = free_ports(len(pairs) + 1)
        self.ports["proxy"] = ports[0]
        for (source, destination), port in zip(pairs, ports[1:]):
            name = link_name(source, destination)
            self.links[name] = LinkSpec(name, port, self.config.interface, self.ports[destination])

    # -- addresses --------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://{self.config.interface}:{self.ports[name]}"

    @property
    def frontend_url(self) -> str:
        return self.url("frontend")

    @property
    def catalog_replicated(self) -> bool:
        return self.config.catalog_members > 1

    @property
    def catalog_ids(self) -> list[int]:
        """The ids of the catalog members (none for a catalog alone)."""
        return list(range(1, self.config.catalog_members + 1)) if self.catalog_replicated else []

    @property
    def catalog_names(self) -> list[str]:
        return [f"catalog-{i}" for i in self.catalog_ids] or ["catalog"]

    @property
    def catalog_url(self) -> str:
        """The catalog alone, or the member that leads now."""
        return self.url(self.catalog_leader_name())

    def catalog_leader(self) -> int | None:
        """The catalog member that says it leads in the highest term, if any answers so."""
        return self._group_leader({i: f"catalog-{i}" for i in self.catalog_ids})

    def catalog_leader_name(self, timeout: float = 10.0) -> str:
        """``"catalog"`` for a catalog alone; else the process name of the member that leads,
        waiting up to ``timeout`` for one."""
        if not self.catalog_replicated:
            return "catalog"
        return f"catalog-{self.wait_for(self.catalog_leader, timeout, 'a catalog leader')}"

    @property
    def replica_ids(self) -> list[int]:
        """Every replica started, those added since (:meth:`add_replica`) included."""
        return list(self._replica_ids)

    def replica_url(self, replica_id: int) -> str:
        return self.url(f"order-{replica_id}")

    @property
    def proxy_url(self) -> str:
        """The fault proxy's control API (only with ``proxied=True``)."""
        return self.url("proxy")

    def replica_url_from(self, source: str, replica_id: int) -> str:
        """How process ``source`` reaches replica ``replica_id``: through its link when proxied."""
        return self.url_from(source, f"order-{replica_id}")

    def url_from(self, source: str, destination: str) -> str:
        """How process ``source`` reaches process ``destination``: through its link when proxied."""
        link = self.links.get(link_name(source, destination))
        return f"http://{self.config.interface}:{link.listen_port}" if link else self.url(destination)

    def environment(self, name: str | None = None) -> dict[str, str]:
        """The environment process ``name`` starts with (None: as seen from outside, unproxied)."""
        env = dict(os.environ)
        source_root = str(Path(toystore.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
        env["TOYSTORE_CLUSTER_TOKEN"] = self.config.token
        source = name or ""
        env["TOYSTORE_CATALOG_URL"] = ",".join(f"{i}={self.url_from(source, f'catalog-{i}')}" for i in self.catalog_ids) \
            if self.catalog_replicated else self.url_from(source, "catalog")
        env["TOYSTORE_FRONTEND_URL"] = self.frontend_url
        urls = {i: self.replica_url(i) if name is None else self.replica_url_from(name, i) for i in self.replica_ids}
        env["TOYSTORE_ORDER_REPLICAS"] = ",".join(f"{i}={url}" for i, url in urls.items())
        return env

    def _argv(self, name: str) -> list[str]:
        c = self.config
        if name == "proxy":
            return [sys.executable, "-m", "toystore.faults.proxy", "--control-port", str(self.ports["proxy"]),
                    "--interface", c.interface] + [f"--link={spec.as_argument()}" for spec in self.links.values()]
        role = name.split("-")[0]
        common = ["--port", str(self.ports[name]), "--interface", c.interface, "--db-delay", str(c.db_delay)]
        if role == "catalog":
            extra = ["--data-dir", str(self.data_dir), "--initial-stock", str(c.initial_stock),
                     "--restock-interval", str(c.restock_interval), "--restock-to", str(c.restock_to)]
            if self.catalog_replicated:
                extra += ["--id", name.split("-")[1]]
                if c.snapshot_every is not None:
                    extra += ["--snapshot-every", str(c.snapshot_every)]
        elif role == "frontend":
            extra = ["--cache-size", str(c.cache_size)]
        else:
            extra = ["--id", name.split("-")[1], "--data-dir", str(self.data_dir), "--replication", c.replication]
            if c.snapshot_every is not None:
                extra += ["--snapshot-every", str(c.snapshot_every)]
        return twistd_command() + ["-n", "--pidfile=", ROLE_PLUGINS[role]] + common + extra

    # -- processes --------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every process and wait until the cluster takes orders."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.proxied:
            self.start_process("proxy")
            self.wait_for(lambda: self._answers("proxy", "/links"), timeout, "the fault proxy up")
        for name in self.catalog_names + [f"order-{i}" for i in self.replica_ids] + ["frontend"]:
            self.start_process(name)
        self.wait_ready(timeout)

    def start_process(self, name: str) -> None:
        process = self.processes[name]
        if process.running:
            return
        log_file = open(process.log_path, "ab")
        process.popen = subprocess.Popen(process.argv, stdout=log_file, stderr=subprocess.STDOUT,
                                         env=self.environment(name), cwd=self.data_dir, start_new_session=True)
        log_file.close()

    def add_replica(self, replica_id: int | None = None) -> int:
        """Start a new order replica with ``--join`` on a free port: it waits to be added
        (``python -m toystore.admin add ID URL``). :return: its id."""
        assert not self.config.proxied, "the fault proxy's links are planned at start"
        replica_id = replica_id or max(self._replica_ids) + 1
        name = f"order-{replica_id}"
        assert name not in self.processes, f"{name} exists"
        self.ports[name] = free_ports(1)[0]
        self._replica_ids.append(replica_id)
        self.processes[name] = Process(name, self._argv(name) + ["--join"], self.log_dir / f"{name}.log")
        self.start_process(name)
        return replica_id

    def wipe(self, replica_id: int) -> None:
        """kill -9 a replica and delete its data folder: its disk is gone."""
        self.kill(f"order-{replica_id}")
        shutil.rmtree(self.data_dir / f"order-{replica_id}", ignore_errors=True)

    def signal(self, name: str, signum: int) -> None:
        process = self.processes[name]
        if process.running:
            assert process.popen is not None
            os.kill(process.popen.pid, signum)

    def kill(self, name: str) -> None:
        """kill -9, and reap it."""
        process = self.processes[name]
        if process.running:
            assert process.popen is not None
            process.popen.kill()
            process.popen.wait(10)

    def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM everything (resuming paused ones), then SIGKILL what is left."""
        for process in self.processes.values():
            if process.running:
                assert process.popen is not None
                os.kill(process.popen.pid, signal.SIGCONT)
                process.popen.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            if process.popen is None:
                continue
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(5)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------------------

    def get(self, name: str, path: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        """``GET path`` of process ``name`` (``"catalog"``: the catalog's leader)."""
        if name == "catalog":
            name = self.catalog_leader_name()
        return http_json("GET", self.url(name) + path, token=self.config.token, timeout=timeout)

    def health(self, replica_id: int, timeout: float = 1.0) -> dict[str, Any] | None:
        return self.health_of(f"order-{replica_id}", timeout)

    def health_of(self, name: str, timeout: float = 1.0) -> dict[str, Any] | None:
        """Process ``name``'s ``/health_check``; None when it does not answer."""
        try:
            status, body = self.get(name, "/health_check", timeout)
        except OSError:
            return None
        return body["data"] if status == 200 else None

    def leader(self) -> int | None:
        """The order replica that says it leads in the highest term, if any answers so."""
        return self._group_leader({i: f"order-{i}" for i in self.replica_ids})

    def _group_leader(self, names: dict[int, str]) -> int | None:
        best: tuple[int, int] | None = None
        for i, name in names.items():
            health = self.health_of(name)
            if health and health["role"] == "leader" and (best is None or health["term"] > best[0]):
                best = (health["term"], i)
        return best[1] if best else None

    def wait_for(self, predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout} s; logs in {self.log_dir}\n{self.log_tails()}")
            time.sleep(interval)

    def log_tails(self, lines: int = 12) -> str:
        """The last lines of every process's log, and how each exited: a failed start's
        temporary folder may be gone by the time anyone reads it."""
        parts = []
        for process in self.processes.values():
            state = "running" if process.running else (
                "not started" if process.popen is None else f"exited {process.popen.returncode}")
            try:
                tail = process.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            parts.append(f"--- {process.name} ({state})\n" + "\n".join(tail))
        return "\n".join(parts)

    def _answers(self, name: str, path: str) -> bool:
        try:
            return self.get(name, path, 1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Catalog and frontend answer, and a leader is elected (a catalog leader too)."""
        for name in self.catalog_names + ["frontend"]:
            self.wait_for(lambda: self._answers(name, "/health"), timeout, f"{name} up")
        if self.catalog_replicated:
            self.wait_for(self.catalog_leader, timeout, "a catalog leader")
        self.wait_for(self.leader, timeout, "a leader")
        self.wait_for(lambda: http_json("GET", self.frontend_url + "/health")[1]["data"].get("leader_id"),
                      timeout, "the frontend to know the leader")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toystore.cluster",
        description="Run a local toystore cluster (catalog, order replicas, frontend) until Ctrl-C, "
                    "or run a command against it and stop.")
    parser.add_argument("--data-dir", type=Path, help="where state and logs go (default: a new temporary folder)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--cache-size", type=int, default=8)
    parser.add_argument("--db-delay", type=float, default=0.0)
    parser.add_argument("--replication", choices=["raft", "primary-backup"], default="raft")
    parser.add_argument("--initial-stock", type=int, default=100)
    parser.add_argument("--catalog-members", type=int, default=3,
                        help="members of the replicated catalog (default 3); 1 runs a catalog alone")
    parser.add_argument("--base-port", type=int, default=None,
                        help="frontend on it, catalog member i +i (a catalog alone +1), replica i +100+i "
                             "(default: free ports)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after --: a command to run once the cluster is ready ({frontend} is replaced by its URL)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="toystore-"))
    config = ClusterConfig(data_dir=data_dir.resolve(), replicas=args.replicas, cache_size=args.cache_size,
                           db_delay=args.db_delay, replication=args.replication,
                           initial_stock=args.initial_stock, base_port=args.base_port,
                           catalog_members=args.catalog_members)
    cluster = LocalCluster(config)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    outcome = 1
    try:
        print(f"Starting a local cluster in {data_dir} ...", flush=True)
        cluster.start()
        print(f"frontend  {cluster.frontend_url}", flush=True)
        for name in cluster.catalog_names:
            print(f"{name:<9} {cluster.url(name)}", flush=True)
        for i in cluster.replica_ids:
            print(f"order-{i}   {cluster.replica_url(i)}", flush=True)
        print(f"logs      {cluster.log_dir}", flush=True)
        command = [part.replace("{frontend}", cluster.frontend_url) for part in args.command if part != "--"]
        if command:
            outcome = subprocess.call(command, env={**cluster.environment(),
                                                    "TOYSTORE_FRONTEND_URL": cluster.frontend_url})
            return outcome
        print("Ready. Ctrl-C stops the cluster.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        outcome = 0
        return outcome
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)  # with every process's last lines
        return outcome
    finally:
        cluster.stop()
        print("Cluster stopped.", flush=True)
        if args.data_dir is None and outcome == 0:
            shutil.rmtree(data_dir, ignore_errors=True)  # a temporary folder; kept with its logs on failure


if __name__ == "__main__":
    sys.exit(main())
