"""The EventBus gRPC server: mTLS, the publish handlers, health, metrics, graceful shutdown.

Handlers take and return raw bytes (no generated deserializer) so that undecodable input is
answered by us, counted, and never reaches the store: a unary call with garbage gets an INVALID
ack, a batch with garbage the status INVALID_ARGUMENT.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nacl.signing import VerifyKey

from appliance.bus.admission import Admission, Verdict
from appliance.bus.auth import TrustHolder
from appliance.bus.chain import key_id
from appliance.bus.config import BusSettings
from appliance.bus.export.exporter import ExportService
from appliance.bus.fleet import AgentCollector
from appliance.bus.gate import Caller, Gate
from appliance.bus.metrics import BusMetrics
from appliance.bus.sink import Sink, SinkBusy
from appliance.bus.store import FlowStore, Outcome, Record, Retention, Row
from appliance.bus.updates import (
    UPDATES_SERVICE,
    UpdateCollector,
    UpdateMetrics,
    UpdateService,
    UpdateStore,
)
from appliance.bus.validate import Limits, Reject, Rejection, check_fields, normal_ip
from appliance.crypto.batch import verify_many
from appliance.errors import CommandError
from appliance.fsm import Machine
from appliance.observability import HttpEndpoint, metrics_route, serve_http, text
from appliance.wire import (
    BUS_TIME_KEY,
    SERVICE_NAME,
    Envelope,
    PublishAck,
    PublishBatchRequest,
    pb,
)

log = logging.getLogger(__name__)

OK, RETRY, INVALID = PublishAck.OK, PublishAck.RETRY, PublishAck.INVALID
STATUS_NAME = {OK: "OK", RETRY: "RETRY", INVALID: "INVALID"}
COMMIT_TIMEOUT_S = 30.0
#: Workers beyond max_open_calls: room for refusals and health checks while every call slot
#: is taken.
SPARE_WORKERS = 16
#: Batches at least this large are verified on several threads.
PARALLEL_MIN_BATCH = 64


class EventBusService:
    """The publish handlers. One instance per server; thread-safe.

    They run behind the gate (appliance/bus/gate.py), which has identified and admitted the
    caller before any byte of the message was read, hands them that `Caller`, and times them.
    """

    def __init__(
        self,
        settings: BusSettings,
        store: Sink,
        metrics: BusMetrics,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        cfg = settings.eventbus
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.clock_ns = clock_ns
        self.limits = Limits(
            cfg.max_env_bytes, int(cfg.max_future_skew_s * 1e9), int(cfg.max_past_age_s * 1e9)
        )
        self.admission = Admission(
            max_inflight=cfg.max_inflight,
            hard_max=cfg.hard_max,
            backoff_hint_ms=cfg.backoff_hint_ms,
            max_backoff_hint_ms=cfg.max_backoff_hint_ms,
            max_store_queue_rows=cfg.max_store_queue_rows,
            store_pending_rows=lambda: store.pending_rows,
            overload=cfg.overload,
        )
        metrics.inflight.set_function(lambda: self.admission.inflight)
        #: INVALID envelopes per agent (bounded by the trust map: untrusted callers never get
        #: this far), and a log line per agent at most every REFUSAL_LOG_S.
        self.refusals = RefusalLog()
        self._verify_threads = cfg.verify_threads or os.cpu_count() or 1
        self._verify_pool = futures.ThreadPoolExecutor(
            max_workers=self._verify_threads, thread_name_prefix="bus-verify"
        )

    def close(self) -> None:
        """Stop the verify pool (after the gRPC server has finished its calls)."""
        self._verify_pool.shutdown(wait=True)

    # -- handlers -------------------------------------------------------------------------------

    def publish(self, request: bytes, context: grpc.ServicerContext, caller: Caller) -> bytes:
        """The seed's unary Publish: one envelope, one ack."""
        try:
            env = Envelope.FromString(request)
        except DecodeError:
            self._count(INVALID, Reject.UNDECODABLE)
            return PublishAck(status=INVALID, reason="undecodable envelope").SerializeToString()
        acks = self._process(context, caller, [env], [len(request)])
        _stamp_time(context)
        return acks[0].SerializeToString()

    def publish_batch(self, request: bytes, context: grpc.ServicerContext, caller: Caller) -> bytes:
        """Many envelopes, an ack each, one store commit."""
        try:
            batch = PublishBatchRequest.FromString(request)
        except DecodeError:
            self.metrics.rejected_total.labels(Reject.UNDECODABLE.value).inc()
            self.metrics.invalid_total.inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "undecodable batch")
        envs = list(batch.envelopes)
        if len(envs) > self.cfg.max_batch:
            self.metrics.rejected_total.labels(Reject.BATCH_TOO_LARGE.value).inc()
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch of {len(envs)} envelopes exceeds max_batch {self.cfg.max_batch}",
            )
        acks = self._process(context, caller, envs, [e.ByteSize() for e in envs])
        _stamp_time(context)
        return pb.PublishBatchResponse(acks=acks).SerializeToString()

    # -- the shared path ------------------------------------------------------------------------

    def _count(self, status: Any, reason: Reject | None = None, n: int = 1) -> None:
        self.metrics.publish_total.labels(STATUS_NAME[status]).inc(n)
        if status == INVALID:
            self.metrics.invalid_total.inc(n)
            if reason is not None:
                self.metrics.rejected_total.labels(reason.value).inc(n)
        elif status == RETRY:
            self.metrics.retry_total.inc(n)

    def _process(
        self,
        context: grpc.ServicerContext,
        caller: Caller,
        envs: Sequence[Envelope],
        sizes: Sequence[int],
    ) -> list[PublishAck]:
        decision = self.admission.decide()
        if decision.verdict is Verdict.REFUSE:
            self.metrics.refused_calls_total.inc()
            hint = str(decision.backoff_hint_ms)
            context.set_trailing_metadata(
                (("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint))
            )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, decision.reason)
        if decision.verdict is Verdict.RETRY:
            self._count(RETRY, n=len(envs))
            ack = PublishAck(
                status=RETRY, reason=decision.reason, backoff_hint_ms=decision.backoff_hint_ms
            )
            return [ack] * len(envs)
        try:
            return self._verify_and_store(caller.cn, caller.key, envs, sizes)
        finally:
            self.admission.release()

    def _check_all(
        self, cn: str, key: VerifyKey, envs: Sequence[Envelope], sizes: Sequence[int], now: int
    ) -> list[Rejection | None]:
        """The rejection of each envelope (None: accepted so far).

        Field checks (appliance/bus/validate.py) run per envelope; the signatures of those that
        pass are verified as batches (appliance.crypto.batch). The batch equation releases the
        GIL, so a large batch is split across the verify pool and uses every core.
        """
        reasons = [
            check_fields(env, size, cn, now, self.limits)
            for env, size in zip(envs, sizes, strict=True)
        ]
        signed = [i for i, reason in enumerate(reasons) if reason is None]
        n = len(signed)
        if n == 0:
            return reasons
        parts = 1 if n < PARALLEL_MIN_BATCH else self._verify_threads
        step = -(-n // parts)
        slices = [signed[lo : lo + step] for lo in range(0, n, step)]
        pending = [
            self._verify_pool.submit(verify_many, [envs[i] for i in part], key)
            for part in slices[1:]
        ]
        # this thread takes the first slice itself
        results = [verify_many([envs[i] for i in slices[0]], key)]
        results += [future.result() for future in pending]
        for part, valid in zip(slices, results, strict=True):
            for i, ok in zip(part, valid, strict=True):
                if not ok:
                    reasons[i] = BAD_SIGNATURE
        return reasons

    def _verify_and_store(
        self, cn: str, key: VerifyKey, envs: Sequence[Envelope], sizes: Sequence[int]
    ) -> list[PublishAck]:
        now = self.clock_ns()
        acks: list[PublishAck | None] = [None] * len(envs)
        records: list[Record] = []
        accepted: list[int] = []
        chain_key = key_id(key)
        refused: collections.Counter[Reject] = collections.Counter()
        for i, (env, rejection) in enumerate(
            zip(envs, self._check_all(cn, key, envs, sizes, now), strict=True)
        ):
            if rejection is not None:
                refused[rejection.kind] += 1
                acks[i] = PublishAck(status=INVALID, reason=rejection.message)
                continue
            records.append(envelope_record(env, env.SerializeToString(), now, chain_key))
            accepted.append(i)
        if records:
            started = time.perf_counter()
            try:
                result = self.store.submit(records).result(timeout=COMMIT_TIMEOUT_S)
            except SinkBusy as exc:  # a full stream, no quorum: nothing was acked as stored
                retry = PublishAck(
                    status=RETRY, reason=exc.reason, backoff_hint_ms=exc.backoff_hint_ms
                )
                for i in accepted:
                    acks[i] = retry
                self._count(RETRY, n=len(accepted))
            except Exception as exc:  # the store failed or stalled: nothing was acked as stored
                log.error("store commit failed for %d envelopes from %s: %s", len(records), cn, exc)
                hint = self.cfg.backoff_hint_ms * 4
                retry = PublishAck(status=RETRY, reason="store unavailable", backoff_hint_ms=hint)
                for i in accepted:
                    acks[i] = retry
                self._count(RETRY, n=len(accepted))
            else:
                self.metrics.store_commit_seconds.observe(time.perf_counter() - started)
                self.metrics.stored_total.inc(result.inserted)
                self.metrics.duplicates_total.inc(result.duplicates)
                ok = PublishAck(status=OK)
                n_ok = 0
                for i, outcome in zip(accepted, result.outcomes, strict=True):
                    if outcome in (Outcome.STORED, Outcome.DUPLICATE):
                        acks[i] = ok
                        n_ok += 1
                    else:
                        rejection = STORE_REJECTIONS[outcome]
                        acks[i] = PublishAck(status=INVALID, reason=rejection.message)
                        refused[rejection.kind] += 1
                self._count(OK, n=n_ok)
        for kind, n in refused.items():
            self._count(INVALID, kind, n)
        if refused:
            self.refusals.note(cn, refused)
        return [a for a in acks if a is not None]


class RefusalLog:
    """Envelopes answered INVALID, per agent: a counter for the per-agent series and at most
    one warning per agent every REFUSAL_LOG_S (a broken or hostile box cannot flood the log),
    naming the kinds refused since the last line. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self._pending: dict[str, collections.Counter[Reject]] = {}
        self._logged_at: dict[str, float] = {}

    def note(self, agent: str, kinds: collections.Counter[Reject]) -> None:
        with self._lock:
            self.totals[agent] = self.totals.get(agent, 0) + sum(kinds.values())
            pending = self._pending.setdefault(agent, collections.Counter())
            pending.update(kinds)
            now = self._clock()
            if now - self._logged_at.get(agent, -REFUSAL_LOG_S) < REFUSAL_LOG_S:
                return
            self._logged_at[agent] = now
            summary = ", ".join(f"{k.value} {n}" for k, n in sorted(pending.items(), key=str))
            pending.clear()
        log.warning("agent %s: envelopes refused (INVALID): %s", agent, summary)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.totals)


REFUSAL_LOG_S = 10.0
BAD_SIGNATURE = Rejection(Reject.BAD_SIGNATURE, "bad signature")
#: The store's refusals, as the sender reads them.
STORE_REJECTIONS = {
    Outcome.CONFLICT: Rejection(
        Reject.CONFLICT, "conflict: this idempotency key is stored with other content"
    ),
    Outcome.SEQ_REUSED: Rejection(
        Reject.SEQ_REUSED, "seq already used by another envelope of this agent key"
    ),
    Outcome.CHAIN_BROKEN: Rejection(
        Reject.CHAIN_BROKEN, "chain broken: prev_sig contradicts a stored neighbour"
    ),
    Outcome.UNSTORABLE: Rejection(Reject.UNSTORABLE, "a value the store cannot hold"),
}


def envelope_record(env: Envelope, raw: bytes, received_ns: int, key_id: str) -> Record:
    """The store record of an accepted envelope (row in the column order of store.COLUMNS).

    Addresses are stored in their normal text form, so that `bus query --address` finds an
    address however the sender wrote it.
    """
    row: Row
    if env.HasField("flow"):
        f = env.flow
        row = (
            env.agent_id, env.idempotency_key, env.seq, env.ts_ns, received_ns, "flow",
            normal_ip(f.src_ip), normal_ip(f.dst_ip), f.src_port, f.dst_port, f.proto.upper(),
            f.bytes_tx, f.bytes_rx, f.packets_tx, f.packets_rx, f.start_time, f.end_time, f.vlan,
            raw, key_id,
        )  # fmt: skip
    else:
        kind = "counters" if env.HasField("counters") else "health"
        row = (
            env.agent_id, env.idempotency_key, env.seq, env.ts_ns, received_ns, kind,
            None, None, None, None, None, None, None, None, None, None, None, None, raw, key_id,
        )  # fmt: skip
    if env.HasField("health"):
        return Record(
            row, env.prev_sig, env.sig, env.health.SerializeToString(), env.health.sample_ns
        )
    return Record(row, env.prev_sig, env.sig)


def _stamp_time(context: grpc.ServicerContext) -> None:
    context.set_trailing_metadata(((BUS_TIME_KEY, str(time.time_ns())),))


class ServerState(enum.Enum):
    """Where a BusServer is in its life; STOPPED is final (a gRPC server does not restart)."""

    NEW = "new"
    STARTING = "starting"
    SERVING = "serving"
    STOPPED = "stopped"


class ServerEvent(enum.Enum):
    """What moves a BusServer: start(), the end of a successful start, stop()."""

    START = "start"
    STARTED = "started"
    STOP = "stop"


_SS, _SE = ServerState, ServerEvent
LIFECYCLE: dict[tuple[ServerState, ServerEvent], ServerState] = {
    (_SS.NEW, _SE.START): _SS.STARTING,
    (_SS.STARTING, _SE.STARTED): _SS.SERVING,
    (_SS.STARTING, _SE.STOP): _SS.STOPPED,  # start() failed and raised
    (_SS.NEW, _SE.STOP): _SS.STOPPED,  # never started: nothing to release
    (_SS.SERVING, _SE.STOP): _SS.STOPPED,
    (_SS.STOPPED, _SE.STOP): _SS.STOPPED,  # stop() is idempotent
}


class BusServer:
    """A bus: gRPC server, store, trust map, metrics and health endpoints.

    Lifecycle (appliance.fsm over LIFECYCLE): construction only takes the settings and creates
    the metrics; `start()` binds the ports, then opens the store, then serves (it raises
    CommandError on bad credentials or a port it cannot bind, and then leaves no store behind);
    `wait()` blocks until a signal or `stop()`; `stop()` stops accepting calls, lets in-flight
    calls finish within shutdown_grace_s, commits the store and closes the endpoints. As a
    context manager, entering starts it and leaving stops it. Starting twice, or after stop(),
    raises fsm.IllegalTransition.
    """

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self.metrics = BusMetrics()
        self._stopped = threading.Event()
        self._lifecycle_lock = threading.Lock()
        self._machine = Machine("bus server", LIFECYCLE, ServerState.NEW)
        self.ready = False
        self.endpoints: list[HttpEndpoint] = []

    @property
    def state(self) -> ServerState:
        """Where the server is in its lifecycle."""
        return self._machine.state

    def start(self) -> BusServer:
        """Bind the ports, open the store and serve; returns self once it serves."""
        with self._lifecycle_lock:
            self._machine.move(ServerEvent.START)
            try:
                self._open_and_serve()
            except BaseException:
                self._machine.move(ServerEvent.STOP)
                self._stopped.set()  # nothing to wait for
                raise
            self._machine.move(ServerEvent.STARTED)
        return self

    def _open_and_serve(self) -> None:
        settings = self.settings
        cfg = settings.eventbus
        creds = _server_credentials(settings)
        self.trust = TrustHolder(cfg.trust_map_path(), cfg.revocation_list_path())
        self.metrics.trust_map_agents.set(len(self.trust.current))
        self.health = health.HealthServicer()
        # Every open call may hold a worker (the gate bounds them to max_open_calls); the spare
        # workers answer refusals and health checks while all of those are taken.
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=cfg.max_open_calls + SPARE_WORKERS, thread_name_prefix="bus"
            ),
            options=_server_options(settings),
        )
        # Ports first, the store last: a bus that cannot listen leaves nothing behind.
        self.port = _bind(self.grpc, f"{_bracket(cfg.host)}:{cfg.port}", creds)
        try:
            if cfg.metrics_port != -1:
                self.endpoints.append(
                    serve_http(
                        cfg.host,
                        cfg.metrics_port,
                        {"/metrics": metrics_route(self.metrics.registry)},
                        "bus-metrics",
                    )
                )
            if cfg.health_port != -1:
                self.endpoints.append(
                    serve_http(
                        cfg.host,
                        cfg.health_port,
                        {"/healthz": lambda: text(200, "ok\n"), "/ready": self._ready_route},
                        "bus-health",
                    )
                )
        except OSError as exc:
            self._close_endpoints()
            raise CommandError(f"cannot open the HTTP endpoints: {exc.strerror}") from exc
        self.store: Sink
        if cfg.sink == "jetstream":  # a stateless replica: docs/SCALE.md
            from appliance.bus.jetstream.sink import JetStreamSink

            try:
                self.store = JetStreamSink(cfg.jetstream, cfg.backoff_hint_ms)
            except BaseException:
                self._close_endpoints()
                raise
            where = f"JetStream stream {cfg.jetstream.stream}"
            # no collectors (config.validate): `bus export ipfix` reads the consumer's store
            store_path = settings.storage.data_dir / cfg.db_name
        else:
            flow_store = FlowStore(
                settings.storage.data_dir / cfg.db_name,
                sync=cfg.db_sync,
                gap_settle_s=cfg.gap_settle_s,
                on_event=lambda kind: self.metrics.chain_events_total.labels(kind.value).inc(),
                retention=Retention(cfg.retention_max_age_s, cfg.retention_max_bytes or 1 << 62),
            )
            self.store = flow_store
            store_path = flow_store.path
            where = str(store_path)
        self.metrics.store_up.set_function(lambda: float(self.store.healthy()))
        self.metrics.store_bytes.set_function(self.store.size_bytes)
        self.service = EventBusService(settings, self.store, self.metrics)
        # IPFIX export (appliance/bus/export/): tails the store; stopped before the store closes
        self.export = ExportService(
            cfg.export.ipfix, store_path, settings.storage.data_dir, self.metrics.export
        )
        if cfg.per_agent_metrics:
            self.metrics.registry.register(
                AgentCollector(
                    self.store.agents,
                    lambda: self.trust.current.keys,
                    self.service.refusals.snapshot,
                )
            )
        self.gate = Gate(
            self.trust,
            self.metrics,
            max_open_calls=cfg.max_open_calls,
            max_calls_per_peer=cfg.max_calls_per_peer,
            message_deadline_s=cfg.message_deadline_s,
            backoff_hint_ms=cfg.backoff_hint_ms,
        )
        self.metrics.inflight.set_function(lambda: self.gate.slots.open)
        self.metrics.calls_awaiting_message.set_function(lambda: self.gate.awaiting_message)
        #: /ready answers 200 only while every one of these is true.
        self.readiness: list[Callable[[], bool]] = [
            lambda: self.ready,
            lambda: self.store.healthy(),
        ]
        # Stream-request methods: the gate runs on the call's headers, before any message is
        # read; unary clients are unaffected (appliance/bus/gate.py).
        handlers = {
            "Publish": grpc.stream_unary_rpc_method_handler(self.gate.wrap(self.service.publish)),
            "PublishBatch": grpc.stream_unary_rpc_method_handler(
                self.gate.wrap(self.service.publish_batch)
            ),
        }
        self.grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        # updates delivered through the bus: the same gate, the same connection (updates.py)
        up = cfg.update
        self.updates = UpdateStore(settings.storage.data_dir / up.dir)
        self.update_service = UpdateService(
            self.updates,
            UpdateMetrics(self.metrics.registry),
            max_chunk=up.max_chunk_bytes,
            rate_bytes_per_peer=up.rate_bytes_per_peer,
        )
        if cfg.per_agent_metrics:
            self.metrics.registry.register(
                UpdateCollector(self.updates.reports, lambda: list(self.trust.current.keys))
            )
        update_handlers = {
            "Check": grpc.stream_unary_rpc_method_handler(
                self.gate.wrap(self.update_service.check)
            ),
            "Fetch": grpc.stream_unary_rpc_method_handler(
                self.gate.wrap(self.update_service.fetch)
            ),
        }
        self.grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(UPDATES_SERVICE, update_handlers),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.grpc.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.ready = True
        log.info(
            "bus listening on %s:%d (mTLS), %d agents trusted, store %s",
            cfg.host,
            self.port,
            len(self.trust.current),
            where,
        )

    @property
    def metrics_port(self) -> int | None:
        return self.endpoints[0].port if self.settings.eventbus.metrics_port != -1 else None

    @property
    def health_port(self) -> int | None:
        return self.endpoints[-1].port if self.settings.eventbus.health_port != -1 else None

    def _ready_route(self) -> tuple[int, str, bytes]:
        if all(check() for check in self.readiness):
            return text(200, "ready\n")
        failure = getattr(self.store, "failure", None)
        return text(503, f"not ready: {failure}\n" if self.ready and failure else "not ready\n")

    def reload_trust_map(self) -> bool:
        """SIGHUP: load the trust map again without touching connections."""
        ok = self.trust.reload()
        self.metrics.trust_map_reloads_total.labels("ok" if ok else "error").inc()
        self.metrics.trust_map_agents.set(len(self.trust.current))
        return ok

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; SIGHUP reloads the trust map."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="bus-stop").start()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=self.reload_trust_map, name="bus-reload").start()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def wait(self) -> None:
        """Block until stop() has completed."""
        while not self._stopped.wait(0.5):
            pass

    def stop(self) -> None:
        """Graceful shutdown (idempotent; on a server never started, it only marks it stopped)."""
        with self._lifecycle_lock:
            if self._machine.state is ServerState.SERVING:
                self.ready = False
                self.health.enter_graceful_shutdown()
                self.grpc.stop(self.settings.eventbus.shutdown_grace_s).wait()
                self.service.close()
                self.gate.close()
                self.export.close()  # IPFIX export: sessions closed, positions saved
                self.store.close()
                self.updates.close()
                self._close_endpoints()
                log.info("bus stopped; store committed")
            self._machine.move(ServerEvent.STOP)
            self._stopped.set()

    def _close_endpoints(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()

    def __enter__(self) -> BusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_options(settings: BusSettings) -> list[tuple[str, int]]:
    """gRPC core options: what any peer, trusted or not, can make the bus hold."""
    cfg = settings.eventbus
    return [
        # the largest legal batch, nothing more (EventBusConfig.receive_cap)
        ("grpc.max_receive_message_length", cfg.receive_cap()),
        ("grpc.so_reuseport", 0),
        # No grpc.max_concurrent_streams: grpcio's client does not queue behind it but fails the
        # excess calls with REFUSED_STREAM (UNAVAILABLE, no retry hint), and a peer can open more
        # connections anyway. The gate's per-peer limit bounds calls with a hint instead.
        ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(cfg.max_connection_idle_s * 1000)),
    ]


def _bind(server: grpc.Server, address: str, creds: grpc.ServerCredentials) -> int:
    """server.add_secure_port, or a CommandError of one line saying why not.

    gRPC core writes its own error line straight to file descriptor 2 when a bind fails; it is
    captured here (this runs once, at start-up, before any other thread of ours writes there)
    and its reason folded into our line, so that `bus serve` prints exactly one.
    """
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            port = server.add_secure_port(address, creds)
        except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
            port = 0
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        core = captured.read().decode("utf-8", "replace")
    if port:
        sys.stderr.write(core)  # nothing of gRPC's is lost when the bind worked
        return port
    reason = "address in use" if "in use" in core else "not a local address or not permitted"
    raise CommandError(f"cannot listen on {address}: {reason}")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _server_credentials(settings: BusSettings) -> grpc.ServerCredentials:
    tls = settings.eventbus.tls
    paths = {"CA certificate": tls.path(tls.ca), "server certificate": tls.path(tls.cert)}
    paths["server key"] = tls.path(tls.key)
    data = {}
    for what, path in paths.items():
        try:
            data[what] = path.read_bytes()
        except OSError as exc:
            raise CommandError(
                f"cannot read {what} {path} ({exc.strerror}): "
                f"run `infraspectre pki init {tls.cert_dir}` or set eventbus.tls.cert_dir"
            ) from exc
    return grpc.ssl_server_credentials(
        [(data["server key"], data["server certificate"])],
        root_certificates=data["CA certificate"],
        require_client_auth=True,
    )
