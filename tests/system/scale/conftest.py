"""Fixtures for the bus on NATS JetStream: a three-node cluster on loopback (nats-server from
Debian), two bus replicas as real processes, a PKI with three agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport.scale import AGENTS, Replica, write_config

from appliance.devkit.bus.natscluster import LocalCluster
from appliance.devkit.localprocs import free_port
from appliance.pki import init_pki, issue_agent


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three nats-server processes on 127.0.0.1 with cluster routes and JetStream storage under
    tmp_path; stopped (by PID) when the test ends, whatever happened."""
    cluster = LocalCluster(tmp_path / "nats", 3)
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def scale_pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_pki(d, [])
    for agent in AGENTS:
        issue_agent(d, agent)
    return d


@pytest.fixture
def replicas(
    scale_pki: Path, nats_cluster: LocalCluster, tmp_path: Path
) -> Iterator[list[Replica]]:
    """Two bus replicas on the cluster (each its own data folder: they store nothing)."""
    made = []
    for i in range(2):
        port = free_port()
        folder = tmp_path / f"replica{i}"
        folder.mkdir()
        cfg = write_config(
            folder / "bus.yaml", scale_pki, folder / "data", port, nats_cluster,
            duplicate_window_s=3.0,
        )  # fmt: skip
        made.append(Replica(cfg, port))
    try:
        for r in made:
            r.start()
        yield made
    finally:
        for r in made:
            r.stop()
