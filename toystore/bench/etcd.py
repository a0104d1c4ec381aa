"""Three etcd members on loopback, the bench's yardstick for a Raft store on this machine.

etcd (Debian's ``etcd-server``) fsyncs its log and database by default, as our replicas
do; a put is acknowledged once a majority holds it. The bench drives ``POST
/v3/kv/put`` (the JSON gateway) with the same load generator and connections as orders,
and reports every order figure beside etcd's, measured in the same run.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from toystore.bench.loadgen import Job
from toystore.cluster import free_ports

MEMBERS = 3
READY_TIMEOUT = 20.0


def find_etcd() -> str | None:
    return shutil.which("etcd")


def member_argv(etcd: str, index: int, client_ports: list[int], peer_ports: list[int], data_dir: Path) -> list[str]:
    """The command line of member ``index`` (from 0) of a loopback cluster, fsync on (etcd's default)."""
    name = f"m{index + 1}"
    peers = ",".join(f"m{i + 1}=http://127.0.0.1:{port}" for i, port in enumerate(peer_ports))
    return [etcd, "--name", name, "--data-dir", str(data_dir / name),
            "--listen-client-urls", f"http://127.0.0.1:{client_ports[index]}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_ports[index]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[index]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[index]}",
            "--initial-cluster", peers, "--initial-cluster-state", "new",
            "--initial-cluster-token", "toystore-bench", "--log-level", "error"]


def put_job(client_url: str, key: str = "toystore-bench") -> Job:
    """A put of a small value, what an order is to us."""
    body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(b"x" * 64).decode()}
    return Job(f"{client_url}/v3/kv/put", method="POST", body=json.dumps(body).encode(), timeout=15.0)


def _answers_put(client_url: str) -> bool:
    job = put_job(client_url, "toystore-bench-ready")
    request = urllib.request.Request(job.url, data=job.body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def etcd_cluster(etcd: str, data_dir: Path) -> Iterator[list[str]]:
    """Starts three members and yields their client URLs once a put commits; stops them on the way out."""
    ports = free_ports(2 * MEMBERS)
    client_ports, peer_ports = ports[:MEMBERS], ports[MEMBERS:]
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(data_dir / f"m{i + 1}.log", "wb") for i in range(MEMBERS)]
    members = [subprocess.Popen(member_argv(etcd, i, client_ports, peer_ports, data_dir), stdout=logs[i],
                                stderr=subprocess.STDOUT) for i in range(MEMBERS)]
    urls = [f"http://127.0.0.1:{port}" for port in client_ports]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers_put(urls[0]):
            if time.monotonic() > deadline or any(member.poll() is not None for member in members):
                raise RuntimeError(f"etcd did not come up within {READY_TIMEOUT:.0f} s; logs in {data_dir}")
            time.sleep(0.1)
        yield urls
    finally:
        for member in members:
            member.terminate()
        for member in members:
            try:
                member.wait(10)
            except subprocess.TimeoutExpired:
                member.kill()
                member.wait()
        for log_file in logs:
            log_file.close()
