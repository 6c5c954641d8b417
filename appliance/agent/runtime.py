"""The agent: sources -> seal -> WAL -> forwarder, with health, metrics and signals.

Threads and who owns what:
- the *pipeline* thread owns the Sealer (the chain is a sequence): it polls the flow source,
  samples interface counters and the box's health (health.py) on their intervals, seals each
  record and appends it to the WAL;
- the *forwarder* threads (`agent.max_in_flight` of them) drain the WAL to the bus, each
  with its own batch in flight (forwarder.py);
- the HTTP endpoint thread serves /metrics, /healthz, /ready;
- the WAL runs its own flusher (group commit on its interval).

Ready means: identity loaded, WAL open, capture running (and not stopping).

Stop (SIGTERM), within `shutdown_timeout_s`: stop the capture and seal the flows still open
(end reason SHUTDOWN), flush the WAL, stop the forwarder, record the chain's exact end, close
the WAL. Records not yet delivered stay in the WAL for the next run.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID
from nacl.signing import SigningKey

from appliance import __version__
from appliance.agent.chain import ChainState
from appliance.agent.clock import ClockFollower, slew_system_clock
from appliance.agent.config import AgentConfig
from appliance.agent.forwarder import ForwarderConfig, ForwarderPool, OutRecord
from appliance.agent.health import (
    CaptureCounts,
    HealthFacts,
    HealthSchedule,
    build_health,
    read_boot_slot,
    read_cert_not_after,
)
from appliance.agent.metrics import AgentSnapshot, agent_registry
from appliance.agent.transport import GrpcTransport, Identity, Transport
from appliance.crypto import Sealer, load_signing_key
from appliance.errors import CommandError
from appliance.observability import HttpEndpoint, metrics_route, serve_http, text
from appliance.sysclock import save_clock_floor, set_system_clock
from appliance.wal import WalFull
from appliance.wire import AgentHealth, Envelope, FlowEvent, InterfaceCounters

log = logging.getLogger(__name__)


class FlowSource(Protocol):
    """Metered flows. poll() returns the flows that ended since the last call, waiting at most
    timeout_s for packets; close() stops capturing and returns the flows still open, ended with
    reason SHUTDOWN; stats() returns cumulative capture counters (packets, kernel drops, ...);
    capture_counts() returns each capture interface's kernel counters, accumulated (for the
    health sample). poll, close and capture_counts are called on the pipeline thread only;
    stats from any thread. follow_clock(follower) is called once, before the pipeline starts:
    a source that meters by the wall clock reads it through the follower and moves its open
    flows with each step (agent.clock).
    """

    def follow_clock(self, follower: ClockFollower) -> None: ...

    def poll(self, timeout_s: float) -> Sequence[FlowEvent]: ...

    def close(self) -> Sequence[FlowEvent]: ...

    def stats(self) -> dict[str, float]: ...

    def capture_counts(self) -> Sequence[CaptureCounts]: ...


class CounterSource(Protocol):
    """Interface counters: sample() returns every watched interface's counters and deltas."""

    def sample(self) -> InterfaceCounters: ...


class WalLike(Protocol):
    """The WAL as the agent uses it (appliance.wal.Wal)."""

    def append(self, key: bytes | str, payload: bytes) -> bool: ...

    def read(self, limit: int) -> Sequence[OutRecord]: ...

    def ack(self, seqs: Any) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> Any: ...


@dataclass(frozen=True)
class LoadedIdentity:
    """The agent's id, signing key and TLS identity, validated at start-up."""

    agent_id: str
    signing_key: SigningKey
    tls: Identity
    #: The client certificate's notAfter, UNIX seconds (reported in every health sample).
    cert_not_after_s: int = 0


def load_identity(cfg: AgentConfig) -> LoadedIdentity:
    """Read and cross-check the credentials; the agent id is the client certificate's CN."""
    tls = cfg.tls
    cert_path = tls.path(tls.cert)
    try:
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except OSError as exc:
        raise CommandError(
            f"cannot read the agent certificate {cert_path} ({exc.strerror}): provision the box "
            "or set agent.tls.cert_dir"
        ) from exc
    except ValueError as exc:
        raise CommandError(f"{cert_path} is not a PEM certificate") from exc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if not cn:
        raise CommandError(f"{cert_path} has no common name: it cannot identify an agent")
    if cfg.id and cfg.id != cn:
        raise CommandError(f"agent.id {cfg.id!r} differs from the certificate's CN {cn!r}")
    for what, name in (("CA certificate", tls.ca), ("client key", tls.key)):
        if not tls.path(name).exists():
            raise CommandError(f"missing {what} {tls.path(name)}")
    key = load_signing_key(tls.path(tls.signing_key))
    identity = Identity(
        ca=tls.path(tls.ca),
        cert=cert_path,
        key=tls.path(tls.key),
        server_name=cfg.server_name or None,
    )
    return LoadedIdentity(cn, key, identity, read_cert_not_after(cert_pem))


class Agent:
    """The running agent (see the module docstring)."""

    def __init__(
        self,
        cfg: AgentConfig,
        identity: LoadedIdentity,
        wal: WalLike,
        flows: FlowSource,
        counters: CounterSource | None,
        data_dir: Path,
        *,
        counters_interval_s: float = 10.0,
        transport: Callable[[str], Transport] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cmdline: Path = Path("/proc/cmdline"),
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.wal = wal
        self.flows = flows
        self.counters = counters
        self.counters_interval_s = counters_interval_s
        self._clock = clock
        self._started = clock()
        self.health_facts = HealthFacts(
            version=__version__,
            slot=read_boot_slot(cmdline),
            cert_not_after_s=identity.cert_not_after_s,
        )
        self.chain = ChainState(data_dir / "agent" / "chain.json")
        start = self.chain.start()
        if not start.clean and start.seq:
            log.warning(
                "previous run did not stop cleanly: new chain from seq %d (records sealed in "
                "its last flush window may be lost)",
                start.seq + 1,
            )
        self.sealer = Sealer(
            identity.agent_id, identity.signing_key, seq=start.seq, prev_sig=start.prev_sig
        )
        self.clock_follower = ClockFollower(
            enabled=cfg.clock_from_bus,
            step_to_ns=set_system_clock,
            slew_by_ns=slew_system_clock,
            save_floor=(
                functools.partial(save_clock_floor, Path(cfg.clock_file))
                if cfg.clock_file
                else lambda: None
            ),
        )
        self.flows.follow_clock(self.clock_follower)
        self._make: Callable[[str], Transport] = transport or (
            lambda addr: GrpcTransport(addr, identity.tls, on_time=self.clock_follower.observe)
        )
        self.forwarder = ForwarderPool(
            wal,
            [functools.partial(self._make, addr) for addr in cfg.bus],
            ForwarderConfig(
                batch_size=cfg.batch_size,
                timeout_s=cfg.publish_timeout_s,
                backoff_base_s=cfg.backoff_base_ms / 1000,
                backoff_cap_s=cfg.backoff_cap_ms / 1000,
                send_rate=cfg.send_rate,
                quarantine_path=data_dir / "agent" / "quarantine.jsonl",
                quarantine_max_bytes=cfg.quarantine_max_bytes,
            ),
            workers=cfg.max_in_flight,
        )
        self.flows_sealed = 0
        self.counters_sealed = 0
        self.health_sealed = 0
        self.wal_refused = 0
        self._stopping = threading.Event()
        self._capture_running = False
        self._pipeline = threading.Thread(target=self._run_pipeline, name="agent-pipeline")
        self.endpoint: HttpEndpoint | None = None
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def pipeline_alive(self) -> bool:
        """False once the pipeline thread has ended (a capture failure) while not stopping."""
        return self._pipeline.is_alive() or self._stopping.is_set()

    def reconfigure(self, fresh: AgentConfig) -> list[str]:
        """Apply a reloaded `agent` section: send_rate and bus addresses change live; the rest
        needs a restart and is reported as such. Returns what changed."""
        changed: list[str] = []
        if fresh.send_rate != self.cfg.send_rate:
            self.forwarder.set_send_rate(fresh.send_rate)
            changed.append(f"send_rate={fresh.send_rate}")
        if fresh.bus != self.cfg.bus:
            self.forwarder.set_transports([functools.partial(self._make, a) for a in fresh.bus])
            changed.append(f"bus={','.join(fresh.bus)}")
        for key in ("id", "tls", "server_name", "metrics_host", "metrics_port", "batch_size"):
            if getattr(fresh, key) != getattr(self.cfg, key):
                changed.append(f"{key} (takes effect after a restart)")
        self.cfg.send_rate, self.cfg.bus = fresh.send_rate, fresh.bus
        return changed

    @property
    def ready(self) -> bool:
        return self._capture_running and not self._stopping.is_set()

    def start(self) -> None:
        """Start the pipeline, the forwarder and the HTTP endpoint."""
        if self.cfg.metrics_port != -1:
            registry = agent_registry(self.snapshot)
            self.endpoint = serve_http(
                self.cfg.metrics_host,
                self.cfg.metrics_port,
                {
                    "/metrics": metrics_route(registry),
                    "/healthz": lambda: text(200, "ok\n"),
                    "/ready": lambda: (
                        text(200, "ready\n") if self.ready else text(503, "not ready\n")
                    ),
                },
                "agent-http",
            )
        self._capture_running = True
        self._pipeline.start()
        self.forwarder.start()
        log.info(
            "agent %s running; forwarding to %s", self.identity.agent_id, ", ".join(self.cfg.bus)
        )

    def stop(self) -> None:
        """Graceful stop within shutdown_timeout_s (idempotent)."""
        if self._stopping.is_set():
            self._stopped.wait(self.cfg.shutdown_timeout_s)
            return
        deadline = self._clock() + self.cfg.shutdown_timeout_s
        self._stopping.set()
        self._pipeline.join(max(0.1, deadline - self._clock()))
        self.wal.flush()
        self.forwarder.stop(max(0.1, deadline - self._clock()))
        self.chain.finish(self.sealer.seq, self.sealer.prev_sig)
        self.wal.close()
        if self.endpoint is not None:
            self.endpoint.close()
        log.info(
            "agent stopped: %d flows, %d counter samples and %d health samples sealed",
            self.flows_sealed,
            self.counters_sealed,
            self.health_sealed,
        )
        self._stopped.set()

    # -- the pipeline ------------------------------------------------------------------------------

    def _run_pipeline(self) -> None:
        next_counters = self._clock()
        health = HealthSchedule(self.cfg.health_interval_s, started=self._clock())
        try:
            while not self._stopping.is_set():
                for flow in self.flows.poll(0.1):
                    self._seal(flow=flow)
                if self.counters is not None and self._clock() >= next_counters:
                    self._seal(counters=self.counters.sample())
                    next_counters = self._clock() + self.counters_interval_s
                if health.due(self._clock()):
                    self._seal(health=self.health_sample())
        except Exception:
            log.exception("capture pipeline failed; stopping capture")
            raise
        finally:
            self._capture_running = False
            for flow in self.flows.close():  # the open flows, ended with reason SHUTDOWN
                self._seal(flow=flow)

    def _seal(
        self,
        flow: FlowEvent | None = None,
        counters: InterfaceCounters | None = None,
        health: AgentHealth | None = None,
    ) -> None:
        self.chain.reserve(self.sealer.seq + 1)
        env: Envelope = self.sealer.seal(flow=flow, counters=counters, health=health)
        try:
            self.wal.append(env.idempotency_key, env.SerializeToString())
        except WalFull:  # policy `refuse`: the record is lost here, counted and logged once
            if not self.wal_refused:
                log.error("WAL full (policy refuse): new records are being dropped")
            self.wal_refused += 1
            return
        if flow is not None:
            self.flows_sealed += 1
        elif counters is not None:
            self.counters_sealed += 1
        else:
            self.health_sealed += 1

    def health_sample(self) -> AgentHealth:
        """The box's health now, from its parts (pipeline thread: the capture's kernel counters
        are read there only)."""
        f = self.forwarder.stats
        return build_health(
            self.health_facts,
            sample_ns=time.time_ns(),
            uptime_s=self._clock() - self._started,
            capture=self.flows.capture_counts(),
            wal=self.wal.stats(),
            forwarder_state=f.state.value,
            clock_offset_s=self.clock_follower.offset_s,
            quarantined=f.invalid,
        )

    # -- observability -------------------------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        """Current numbers for /metrics."""
        f = self.forwarder.stats
        wal_stats = self.wal.stats()
        wal = {k: float(v) for k, v in vars(wal_stats).items() if isinstance(v, int | float)}
        return AgentSnapshot(
            flows_sealed=self.flows_sealed,
            counters_sealed=self.counters_sealed,
            health_sealed=self.health_sealed,
            wal_refused=self.wal_refused,
            capture=self.flows.stats(),
            wal=wal,
            publish={"OK": f.ok, "RETRY": f.retry, "INVALID": f.invalid},
            failures=dict(f.failures),
            state=f.state.value,
            backoff_s=f.backoff_s,
            last_success_unix=f.last_success_unix,
            ready=self.ready,
            clock_offset_s=self.clock_follower.offset_s,
            clock_steps=self.clock_follower.steps,
            clock_slews=self.clock_follower.slews,
        )
