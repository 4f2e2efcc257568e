"""A real 3-node RabbitMQ cluster for tests, run by ``deploy/rabbitmq-cluster.sh``.

Each :class:`Cluster` made by :meth:`Cluster.fresh` owns a base dir, a node-name prefix and AMQP
ports of its own (the Erlang distribution ports are the AMQP ports + 20000), so two test runs on
one machine do not meet, and none meets the machine's own node on 5672/25672. Nodes are numbered
1, 2 and 3, as in the script; ``urls[0]`` is node 1's.

In a fixture::

    @pytest.fixture
    def cluster() -> Iterator[Cluster]:
        yield from started_cluster()

It skips when the cluster cannot start (no RabbitMQ on a laptop) and fails instead in CI
(``CI=true``). The methods are blocking (each runs the script, a second or several): from an
async test call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq-cluster.sh"
NODES = 3
HOST = "localhost"
# Three AMQP ports from here (their distribution ports 20000 above): clear of 5672/25672 and of
# the CLI tools' distribution range (35672-35682).
PORT_RANGE = range(5700, 5990, NODES)
START_TIMEOUT = 300.0
NODE_TIMEOUT = 150.0


class ClusterError(RuntimeError):
    """A command of ``deploy/rabbitmq-cluster.sh`` failed; the message holds its output."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> None:
    """Skip the test on a laptop; in CI a missing service is a failure, not a skip."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports() -> tuple[int, int, int]:
    """Three consecutive AMQP ports whose distribution ports (+20000) are free too."""
    bases = list(PORT_RANGE)
    random.shuffle(bases)
    for base in bases:
        ports = (base, base + 1, base + 2)
        if all(_port_free(p) and _port_free(p + 20000) for p in ports):
            return ports
    raise ClusterError(f"no three free ports in {PORT_RANGE.start}-{PORT_RANGE.stop} (and +20000)")


def epmd_names() -> list[str]:
    """Names registered with the local epmd (short names, no host); [] if epmd does not run."""
    try:
        with socket.create_connection(("127.0.0.1", 4369), timeout=5) as sock:
            sock.sendall(b"\x00\x01n")  # NAMES_REQ
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return []
    lines = data[4:].decode(errors="replace").splitlines()  # after epmd's own port
    return [line.split()[1] for line in lines if line.startswith("name ")]


def unavailable_reason() -> str | None:
    """Why no cluster can start here, before trying; None if it may."""
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    if shutil.which("bash") is None:
        return "bash is not installed"
    bin_dir = os.environ.get("RABBITMQ_BIN_DIR")
    if bin_dir:
        found = (Path(bin_dir) / "rabbitmq-server").exists()
    else:
        found = Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or shutil.which("rabbitmq-server") is not None
    if not found:
        return "rabbitmq-server is not installed (or set RABBITMQ_BIN_DIR)"
    return None


@dataclass
class Cluster:
    """Three RabbitMQ nodes ``<prefix>1..3@localhost`` on 127.0.0.1, joined into one cluster."""

    base_dir: Path
    ports: tuple[int, int, int]
    prefix: str
    urls: list[str] = field(default_factory=list)
    start_seconds: float | None = None
    stop_seconds: float | None = None

    @classmethod
    def fresh(cls) -> Cluster:
        """Settings no other cluster on this machine uses: its own dir, node names and ports."""
        tag = uuid.uuid4().hex[:8]
        return cls(base_dir=Path(f"/tmp/sv-rmq-{tag}"), ports=free_ports(), prefix=f"sv{tag}n")

    # -- the script ---------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = NODE_TIMEOUT) -> subprocess.CompletedProcess[str]:
        command = [
            "bash",
            str(SCRIPT),
            "--base-dir",
            str(self.base_dir),
            "--ports",
            ",".join(map(str, self.ports)),
            "--name-prefix",
            self.prefix,
            *args,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            raise ClusterError(f"`rabbitmq-cluster.sh {' '.join(args)}` took over {timeout:.0f}s:\n{output}") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"`rabbitmq-cluster.sh {' '.join(args)}` exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def start(self, timeout: float = START_TIMEOUT) -> list[str]:
        """Start the three nodes and join them; returns (and keeps) one AMQP URL per node."""
        began = time.monotonic()
        done = self.run("start", timeout=timeout)
        self.start_seconds = time.monotonic() - began
        self.urls = [line for line in done.stdout.splitlines() if line.startswith("amqp://")]
        if len(self.urls) != NODES:
            raise ClusterError(f"start printed {len(self.urls)} URLs, not {NODES}:\n{done.stdout}")
        return self.urls

    def stop(self) -> None:
        """Stop every node (a stopped or killed one too) and remove the base dir; idempotent."""
        began = time.monotonic()
        self.run("stop", timeout=START_TIMEOUT)
        self.stop_seconds = time.monotonic() - began

    def stop_node(self, i: int) -> None:
        """``rabbitmqctl stop``: the node leaves cleanly (its queues' leaders move elsewhere)."""
        self.run("stop-node", str(i))

    def start_node(self, i: int) -> None:
        """Start a stopped or killed node again; it rejoins the cluster with its data."""
        self.run("start-node", str(i))

    def kill_node(self, i: int) -> None:
        """SIGKILL the node's Erlang VM: a crash, nothing is flushed or handed over."""
        self.run("kill-node", str(i))

    def rabbitmqctl(self, i: int, *args: str) -> str:
        """``rabbitmqctl -n <node i> ARGS`` with the cluster's cookie; its stdout."""
        return self.run("ctl", str(i), *args).stdout

    # -- reading it ---------------------------------------------------------------------------

    def node_name(self, i: int) -> str:
        return f"{self.prefix}{i}@{HOST}"

    @property
    def node_names(self) -> list[str]:
        return [self.node_name(i) for i in range(1, NODES + 1)]

    def url(self, i: int) -> str:
        return self.urls[i - 1]

    def running_nodes(self, via: int = 1) -> list[str]:
        """The running nodes that node ``via`` sees (``cluster_status``), sorted."""
        status = json.loads(self.rabbitmqctl(via, "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def queue_info(self, name: str, via: int = 1) -> dict[str, Any]:
        """``list_queues`` of one queue, as node ``via`` sees it: type, members, online, leader."""
        out = self.rabbitmqctl(via, "list_queues", "name", "type", "members", "online", "leader", "--formatter", "json")
        for row in json.loads(out):
            if row["name"] == name:
                return dict(row)
        raise ClusterError(f"no queue {name!r} on {self.node_name(via)}")

    def leftovers(self) -> list[str]:
        """What a stopped cluster left behind: its dir, processes, epmd names (want: [])."""
        found: list[str] = []
        if self.base_dir.exists():
            found.append(f"directory {self.base_dir}")
        ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=False)
        found += [f"process {line.strip()[:200]}" for line in ps.stdout.splitlines() if str(self.base_dir) in line]
        short = {name.split("@")[0] for name in self.node_names}
        found += [f"epmd name {name}" for name in epmd_names() if name in short]
        return found


def started_cluster() -> Iterator[Cluster]:
    """The body of a pytest fixture: a fresh running cluster, stopped and removed afterwards."""
    problem = unavailable_reason()
    if problem is not None:
        skip_or_fail(f"no RabbitMQ cluster: {problem}")
    cluster = Cluster.fresh()
    try:
        cluster.start()
    except ClusterError as exc:
        with contextlib.suppress(ClusterError):
            cluster.stop()
        skip_or_fail(f"the RabbitMQ cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
