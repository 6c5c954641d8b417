"""`infraspectre agent run`: the on-device agent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add the `agent` command tree."""
    agent = sub.add_parser("agent", help="the on-device agent: capture, seal, WAL, forward")
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    agent_sub.required = True
    run = agent_sub.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", type=Path, help="YAML configuration (default: built-in)")
    run.set_defaults(func=_run)


def load_agent_settings(path: Path | None, env: Any = None) -> dict[str, Any]:
    """Every section the agent uses, validated strictly before anything starts."""
    from appliance.agent.config import AGENT_ENV, AgentConfig
    from appliance.capture.config import load_capture_config
    from appliance.config import STORAGE_ENV, StorageConfig, build_section, load_document
    from appliance.wal import load_wal_config

    environ = os.environ if env is None else env
    doc = load_document(path)
    agent = build_section(AgentConfig, doc.get("agent"), "agent", env=environ, env_names=AGENT_ENV)
    return {
        "agent": agent,
        "capture": load_capture_config(doc, dict(environ)),
        "wal": load_wal_config(doc, environ),
        "storage": build_section(
            StorageConfig, doc.get("storage"), "storage", env=environ, env_names=STORAGE_ENV
        ),
    }


def _run(args: argparse.Namespace) -> int:
    from appliance.agent.runtime import Agent, load_identity
    from appliance.agent.sources import LiveFlowSource, NetlinkCounters
    from appliance.agent.updates import UpdateClient, UpdatePoller
    from appliance.wal import Wal

    settings = load_agent_settings(args.config)
    cfg, capture_cfg = settings["agent"], settings["capture"]
    identity = load_identity(cfg)  # fail on credentials before touching the WAL or the NIC
    wal = Wal.open(settings["wal"])
    try:
        flows = LiveFlowSource(capture_cfg)
    except BaseException:
        wal.close()
        raise
    counters = NetlinkCounters(capture_cfg, flows.kernel_counts)
    agent = Agent(
        cfg, identity, wal, flows, counters, settings["storage"].data_dir,
        counters_interval_s=capture_cfg.counters_interval_s,
    )  # fmt: skip
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=_reload, args=(agent, args.config), daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    # updates through the bus: over our own outbound mTLS identity (agent/updates.py)
    updates = UpdatePoller(
        cfg.update, UpdateClient(cfg.bus, identity.tls), settings["storage"].data_dir
    )
    agent.start()
    updates.start()
    print(f"agent {identity.agent_id} ready", flush=True)
    while not stop.wait(0.5):
        if not agent.pipeline_alive:
            log.error("the capture pipeline stopped; exiting so the supervisor restarts us")
            updates.stop()
            agent.stop()
            return 1
    updates.stop()
    agent.stop()
    return 0


def _reload(agent: Any, path: Path | None) -> None:
    """SIGHUP: apply what can change live (send rate, bus addresses); say what cannot."""
    from appliance.errors import CommandError

    try:
        fresh = load_agent_settings(path)["agent"]
    except CommandError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return
    changed = agent.reconfigure(fresh)
    log.info("reloaded: %s", ", ".join(changed) if changed else "nothing changed")
