"""Operations tests: a real Prometheus per test, from Debian's /usr/bin/prometheus.

Each one runs on a free loopback port with its storage in the test's temporary folder and a
short retention, and is stopped by its own PID when the test ends, whatever the outcome.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from testsupport.ops import tool
from testsupport.prometheus import Prometheus, free_port, wait_for

START_TIMEOUT_S = 60.0


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int, Path], Prometheus]]:
    """prometheus(metrics_port, rule_file) -> a Prometheus scraping that port every second."""
    started: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int, rules: Path) -> Prometheus:
        d = tmp_path / f"prometheus-{len(started)}"
        d.mkdir()
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "infraspectre-bus",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        (d / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = d / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={d / 'prometheus.yml'}",
                    f"--storage.tsdb.path={d / 'data'}",
                    "--storage.tsdb.retention.time=15m",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("prometheus ready", ready, START_TIMEOUT_S, prom)
        return prom

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
