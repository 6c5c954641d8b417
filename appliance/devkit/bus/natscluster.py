"""A local NATS JetStream cluster (development kit): nats-server processes on 127.0.0.1, cluster
routes between them, JetStream storage in a folder. For the tests, the bench and trying things
out (never a deployment: docs/SCALE.md says what one looks like).

Every process is started by this object and stopped by its PID (SIGTERM, then SIGKILL after a
bound); `kill(i)` is the hard crash (SIGKILL) the failure tests need, `start(i)` brings the same
node back on the same ports and storage.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from appliance.devkit.localprocs import free_port
from appliance.errors import CommandError

NATS_SERVER = "nats-server"


@dataclass
class Node:
    """One nats-server: its ports, folder and (while running) process."""

    name: str
    port: int
    cluster_port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class LocalCluster:
    """n nats-server processes forming one JetStream cluster (n = 1: a single server)."""

    def __init__(self, folder: Path, n: int = 3, name: str = "infraspectre-local") -> None:
        if shutil.which(NATS_SERVER) is None:
            raise CommandError("nats-server is not installed: apt-get install nats-server")
        self.folder = folder
        self.name = name
        self.nodes = [
            Node(f"n{i + 1}", free_port(), free_port(), folder / f"n{i + 1}") for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _config(self, node: Node) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.port}",
            "max_payload: 1MB",
            "jetstream {",
            f'  store_dir: "{node.folder / "js"}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 16GB",  # a limit, not an allocation
            "}",
        ]
        if len(self.nodes) > 1:
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{o.cluster_port}"' for o in self.nodes if o is not node
            )
            lines += [
                "cluster {",
                f"  name: {self.name}",
                f"  listen: 127.0.0.1:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, i: int | None = None) -> None:
        """Start node i (all when None); does not wait for readiness (wait_ready does)."""
        for node in self.nodes if i is None else [self.nodes[i]]:
            if node.proc is not None and node.proc.poll() is None:
                continue
            node.folder.mkdir(parents=True, exist_ok=True)
            conf = node.folder / "nats.conf"
            conf.write_text(self._config(node))
            log = (node.folder / "nats.log").open("ab")
            node.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()

    def kill(self, i: int) -> None:
        """SIGKILL node i: a crash, nothing flushed."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node: SIGTERM, then SIGKILL what has not ended within 10 s."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)

    def wait_ready(self, timeout_s: float = 120.0, replicas: int | None = None) -> None:
        """Until JetStream answers on every running node and can place a stream of `replicas`
        copies (default: one per node); CommandError naming the logs after timeout_s."""
        replicas = replicas or len(self.nodes)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                asyncio.run(asyncio.wait_for(self._probe(replicas), 10))
                return
            except Exception as exc:  # not up yet, no meta leader yet: try again
                last = str(exc) or type(exc).__name__
                time.sleep(0.5)
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                last += f"; {node.name} exited {node.proc.returncode}"
        raise CommandError(
            f"NATS cluster not ready after {timeout_s:.0f} s ({last}): "
            f"see {self.folder}/n*/nats.log"
        )

    async def _probe(self, replicas: int) -> None:
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            nc = await nats.connect(
                node.url, connect_timeout=2, allow_reconnect=False, error_cb=_quiet
            )
            try:
                js = nc.jetstream(timeout=5)
                await js.account_info()
                name = f"PROBE_{node.name}"
                await js.add_stream(
                    name=name, subjects=[f"probe.{node.name}"], num_replicas=replicas
                )
                await js.delete_stream(name)
            finally:
                await nc.close()

    def __enter__(self) -> LocalCluster:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback prints a traceback per refused connect: not here."""
