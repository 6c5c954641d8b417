"""The IPFIX exporter: tails the store, sends to one collector, keeps its place durably.

One `Exporter` (one thread) per configured collector; `ExportService` starts them with the bus
and stops them before the store closes.

Delivery (stated in docs/EXPORT.md, measured in tests/system/bus/test_export_*.py):

- **The queue is the store.** The exporter reads flows by record id above its position; what
  it holds in memory is bounded by `max_unacked_batches` x `batch_flows` flows. A collector that
  is down or slow makes the exporter fall behind, never the bus: ingest does not wait for it.
  How far behind is `bus_export_lag_records` / `bus_export_lag_seconds`. A flow that retention
  deletes before it was exported is never exported.
- **Position** = (cursor, delivered): every flow with an id up to `cursor` is delivered, and so
  are the ids in `delivered` above it. It is written to `<state_dir>/<collector>.json`
  (write, fsync, rename) when a batch completes and when the exporter stops.
- **TCP**: a flow is delivered when the collector's TCP stack has acknowledged every byte of
  the message carrying it: bytes written minus the socket's unacknowledged bytes (SIOCOUTQ),
  read after each send, also after the connection failed. On a new connection the templates
  go first, sequence numbers restart at 0 (a new transport session, RFC 7011 10.4.1), and the
  flows of messages not wholly acknowledged are sent again; a message cut short by the failure
  is discarded by the collector (it never saw its end), so nothing arrives twice. When the
  collector half-closes (RFC 7011 10.4.1: it stops reading only once we close), the exporter
  stops sending, closes, and reconnects with backoff. Limits: bytes a *killed* collector's
  kernel had acknowledged but the process had not read are lost; a bus that crashes (kill -9,
  power) sends again, after restart, the flows acknowledged since its last state write (at
  most `max_unacked_batches` x `batch_flows`).
- **UDP**: best effort. A message counts as delivered once the socket took it; a message the
  socket refuses twice is dropped and counted (`bus_export_dropped_flows_total`). Templates
  are sent again every `template_refresh_s` and every `template_refresh_messages` messages
  per domain.
"""

from __future__ import annotations

import collections
import enum
import errno
import fcntl
import json
import logging
import os
import random
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.bus.export.config import CollectorConfig, IpfixConfig
from appliance.bus.export.ipfix import Domain, Flow, Identity, MessageBuilder
from appliance.bus.export.metrics import ExportMetrics
from appliance.bus.export.source import StoreReader

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
#: A collector that accepts no byte for this long is treated as gone (the connection is
#: dropped and opened again).
SEND_TIMEOUT_S = 30.0
#: At stop, how long the collector gets to read what was sent and close its end.
DRAIN_S = 5.0
LAG_EVERY_S = 1.0
STATE_VERSION = 1


class Transport(Protocol):
    """A transport session to one collector.

    Lifecycle: `open()` (OSError when the collector cannot be reached), then `send()` each
    message whole and in order (OSError: the session is broken; UDP retries once itself),
    `acked()` any time: how many of the bytes sent in this session the collector has
    acknowledged (TCP: its TCP stack; UDP: every byte sent), also after a failed send;
    `closing()` is true once the collector asked to end the session; `close()` ends it and
    returns the final `acked()`. The exporter thread is the only caller.
    """

    reliable: bool
    #: Bytes handed to the socket in this session.
    written: int

    def open(self) -> None: ...

    def send(self, data: bytes) -> None: ...

    def acked(self) -> int: ...

    def closing(self) -> bool: ...

    def close(self, drain_s: float) -> int: ...


class TcpTransport:
    """IPFIX over TCP (RFC 7011 10.4): a stream of messages, acknowledged by TCP."""

    reliable = True

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.written = 0
        self._last_acked = 0

    def open(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        sock.settimeout(SEND_TIMEOUT_S)
        self.sock, self.written, self._last_acked = sock, 0, 0

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            n = self.sock.send(view)  # counted per call: a failure mid-message leaves it exact
            self.written += n
            view = view[n:]

    def acked(self) -> int:
        if self.sock is None:
            return self._last_acked
        try:
            buf = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            unacked = struct.unpack("i", buf)[0]
        except OSError:
            return self._last_acked
        self._last_acked = max(self._last_acked, self.written - unacked)
        return self._last_acked

    def closing(self) -> bool:
        assert self.sock is not None
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return False
            data = self.sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return not data  # EOF: the collector half-closed; anything else it sent is ignored

    def close(self, drain_s: float) -> int:
        sock = self.sock
        if sock is None:
            return self._last_acked
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + drain_s
            # The collector reads what is left and closes its end: then all of it is acked.
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], min(left, 0.2))
                if ready and not sock.recv(4096, socket.MSG_DONTWAIT):
                    break
        except OSError:
            pass
        acked = self.acked()
        sock.close()
        self.sock = None
        return acked


class UdpTransport:
    """IPFIX over UDP (RFC 7011 10.3): one message per datagram, best effort."""

    reliable = False

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.written = 0

    def open(self) -> None:
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.connect(addr)
        self.sock, self.written = sock, 0

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.send(data)
        except OSError as exc:
            # A connected UDP socket reports an earlier ICMP error (ECONNREFUSED: nothing
            # listened then) on the next send, which it did not send: try once more.
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                raise
            self.sock.send(data)
        self.written += len(data)

    def acked(self) -> int:
        return self.written

    def closing(self) -> bool:
        return False

    def close(self, drain_s: float) -> int:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.written


@dataclass
class Position:
    """How far an exporter has delivered: every id <= cursor, and `delivered` above it."""

    cursor: int = 0
    delivered: set[int] = field(default_factory=set)


class StateFile:
    """An exporter's Position on disk (JSON; replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Position | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning(
                "export state %s unreadable (%s): starting from the store's end", self.path, exc
            )
            return None
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            log.warning(
                "export state %s has an unknown format: starting from the store's end", self.path
            )
            return None
        return Position(int(doc["cursor"]), {int(i) for i in doc.get("delivered", [])})

    def save(self, pos: Position) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {"version": STATE_VERSION, "cursor": pos.cursor, "delivered": sorted(pos.delivered)}
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def state_name(collector: CollectorConfig) -> str:
    """The state file's name for a collector: udp-198.51.100.7-4739.json."""
    host, port = collector.host_port()
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return f"{collector.transport}-{safe}-{port}.json"


@dataclass
class _Pending:
    """A batch read from the store and not yet wholly delivered."""

    flows: list[Flow]
    scanned_upto: int
    undelivered: set[int]
    #: (end offset in the session's byte stream, record ids) of its messages not yet acked
    messages: collections.deque[tuple[int, list[int]]] = field(default_factory=collections.deque)


class State(enum.Enum):
    """The exporter's session state."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass
class Replay:
    """A bounded run over part of the store (`bus export ipfix --since`): no state file."""

    since_ns: int | None
    until_ns: int | None
    until_id: int


class Exporter:
    """One collector's exporter thread (see the module docstring for the semantics)."""

    def __init__(
        self,
        collector: CollectorConfig,
        cfg: IpfixConfig,
        store_path: Path,
        *,
        metrics: ExportMetrics | None = None,
        state: StateFile | None = None,
        replay: Replay | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.collector = collector
        self.cfg = cfg
        self.store_path = store_path
        self.identity = Identity(cfg.domains, cfg.interfaces)
        self.mode = collector.flow_mode()
        host, port = collector.host_port()
        self.transport: Transport = transport or (
            TcpTransport(host, port) if collector.transport == "tcp" else UdpTransport(host, port)
        )
        self.builder = MessageBuilder(
            self.mode,
            cfg.max_message_bytes,
            None if self.transport.reliable else cfg.template_refresh_messages,
        )
        self.metrics = metrics
        self.state_file = state
        self.replay = replay
        self.clock = clock
        self.label = collector.name
        self.state = State.CONNECTING
        self.position = Position()
        self.read_pos = 0
        self.pending: collections.deque[_Pending] = collections.deque()
        self.domains: dict[int, Domain] = {}
        self.flows_delivered = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._dirty = False
        self._next_lag = 0.0
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"ipfix-{self.label}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand, close the session gracefully, save the position."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        try:
            self._run()
        except ConnectionError as exc:  # a replay whose collector cannot be reached
            self.error = exc
        except BaseException as exc:  # a bug of ours: say so, never take the bus down
            self.error = exc
            log.exception("IPFIX exporter to %s stopped", self.label)
        finally:
            self.state = State.STOPPED
            self._gauge_connected(0)
            self.done.set()

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        reader = StoreReader(self.store_path)
        try:
            self._load_position(reader)
            attempt = 0
            while not self._stop.is_set():
                if self.state is not State.STREAMING:
                    if not self._connect():
                        if self.replay is not None:
                            raise ConnectionError(f"cannot reach the collector {self.label}")
                        attempt += 1
                        self.state = State.BACKING_OFF
                        self._stop.wait(self._backoff(attempt))
                        continue
                    attempt = 0
                if self.transport.closing():
                    log.info("collector %s closed its end: reconnecting", self.label)
                    self._disconnect(graceful=True)
                    attempt = 1  # it is going away or restarting: do not knock at once
                    self._stop.wait(self._backoff(attempt))
                    continue
                try:
                    worked = self._step(reader)
                except OSError as exc:
                    self._count("send_errors_total")
                    log.warning("IPFIX export to %s failed: %s", self.label, exc)
                    self._disconnect(graceful=False)
                    continue
                self._lag(reader)
                if self.replay is not None and not worked and not self.pending:
                    return  # replay finished (the finally below closes gracefully)
                if not worked:
                    self._save()
                    self._stop.wait(self.cfg.poll_s if not self.pending else 0.02)
        finally:
            if self.state is State.STREAMING:
                self._disconnect(graceful=True)
            self._save()
            self._lag(reader, force=True)
            reader.close()

    def _load_position(self, reader: StoreReader) -> None:
        head = reader.head()
        if self.replay is not None:
            self.position = Position(0)
        else:
            saved = self.state_file.load() if self.state_file is not None else None
            if saved is None:
                start = 0 if self.cfg.start_at == "oldest" else head
                saved = Position(start)
                log.info("IPFIX export to %s starts after record %d", self.label, start)
                self._dirty = True
            elif saved.cursor > head:
                log.warning(
                    "IPFIX export to %s: saved position %d is past the store's last record %d "
                    "(a new store?): continuing from %d",
                    self.label,
                    saved.cursor,
                    head,
                    head,
                )
                saved = Position(head)
                self._dirty = True
            self.position = saved
        self.read_pos = self.position.cursor

    def _connect(self) -> bool:
        self.state = State.CONNECTING
        try:
            self.transport.open()
        except OSError as exc:
            self._count("send_errors_total")
            log.info("IPFIX collector %s unreachable: %s", self.label, exc)
            return False
        self._count("connects_total")
        self._gauge_connected(1)
        self.state = State.STREAMING
        self.domains = {}  # a new session: templates first, sequence numbers from 0
        log.info("IPFIX export to %s: session open (%s)", self.label, self.collector.mode)
        try:
            for p in self.pending:  # what the last session never had acknowledged
                again = [f for f in p.flows if f.record_id in p.undelivered]
                p.messages.clear()
                self._count("resent_total", len(again))
                self._send(p, again)
        except OSError as exc:
            self._count("send_errors_total")
            log.warning("IPFIX export to %s failed: %s", self.label, exc)
            self._disconnect(graceful=False)
            return False
        return True

    def _disconnect(self, *, graceful: bool) -> None:
        acked = self.transport.close(DRAIN_S if graceful else 0.0)
        self._retire(acked)
        for p in self.pending:
            p.messages.clear()
        self._gauge_connected(0)
        self.state = State.BACKING_OFF if not self._stop.is_set() else State.STOPPED

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.cfg.reconnect_max_s, 2.0 ** min(attempt - 1, 16))
        return random.uniform(ceiling / 2, ceiling)

    def _step(self, reader: StoreReader) -> bool:
        """Retire what was acknowledged; read and send one batch if the window allows.
        True when a batch was read (work was done)."""
        self._retire(self.transport.acked())
        if len(self.pending) >= self.cfg.max_unacked_batches:
            return False
        replay = self.replay
        if replay is not None:
            batch = reader.read(
                self.read_pos,
                self.cfg.batch_flows,
                until_id=replay.until_id,
                since_ns=replay.since_ns,
                until_ns=replay.until_ns,
            )
        else:
            batch = reader.read(self.read_pos, self.cfg.batch_flows)
        if batch.scanned_upto == self.read_pos:
            return False
        self.read_pos = batch.scanned_upto
        already = self.position.delivered
        flows = [f for f in batch.flows if f.record_id not in already]
        p = _Pending(flows, batch.scanned_upto, {f.record_id for f in flows})
        self.pending.append(p)
        self._send(p, flows)
        self._retire(self.transport.acked())
        return True

    def _send(self, p: _Pending, flows: list[Flow]) -> None:
        """Encode flows (grouped by observation domain, store order within each) and send."""
        by_domain: dict[int, list[Flow]] = {}
        for f in flows:
            by_domain.setdefault(self.identity.domain(f.agent_id), []).append(f)
        now = self.clock()
        for domain_id, group in by_domain.items():
            domain = self.domains.get(domain_id)
            if domain is None:
                domain = self.domains[domain_id] = Domain(domain_id, group[0].agent_id)
            if (
                not self.transport.reliable
                and now - domain.templates_sent_s >= self.cfg.template_refresh_s
            ):
                domain.templates_due = True
            if domain.templates_due:
                domain.templates_sent_s = now
            for m in self.builder.build(domain, group, self.identity, int(now)):
                try:
                    self.transport.send(m.data)
                except OSError:
                    if self.transport.reliable:
                        raise
                    self._count("send_errors_total")
                    self._count("dropped_total", len(m.record_ids))
                    p.undelivered.difference_update(m.record_ids)
                    continue
                p.messages.append((self.transport.written, m.record_ids))
                self._count("flows_total", len(m.record_ids))
                self._count("data_records_total", m.data_records)
                self._count("messages_total")
                self._count("bytes_total", len(m.data))

    def _retire(self, acked: int) -> None:
        """Mark flows of acknowledged messages delivered; move the cursor past whole batches."""
        for p in self.pending:
            while p.messages and p.messages[0][0] <= acked:
                _, ids = p.messages.popleft()
                p.undelivered.difference_update(ids)
                self.position.delivered.update(ids)
                self._dirty = True
        while self.pending and not self.pending[0].undelivered:
            p = self.pending.popleft()
            self.position.cursor = p.scanned_upto
            self.position.delivered = {i for i in self.position.delivered if i > p.scanned_upto}
            self.flows_delivered += len(p.flows)
            self._count("delivered_total", len(p.flows))
            self._dirty = True
            if not self.pending:
                self._save()

    def _save(self) -> None:
        if self._dirty and self.state_file is not None:
            try:
                self.state_file.save(self.position)
            except OSError as exc:
                log.error("cannot save IPFIX export state %s: %s", self.state_file.path, exc)
                return
            self._dirty = False

    def _lag(self, reader: StoreReader, force: bool = False) -> None:
        now = time.monotonic()
        if self.metrics is None or (now < self._next_lag and not force):
            return
        self._next_lag = now + LAG_EVERY_S
        try:
            head = reader.head()
            first = reader.first_received_after(self.position.cursor)
        except Exception as exc:  # sqlite3.Error: a store being replaced; next time
            log.debug("lag query failed: %s", exc)
            return
        self.metrics.gauge("lag_records").labels(self.label).set(
            max(0, head - self.position.cursor)
        )
        age = 0.0 if first is None else max(0.0, self.clock() - first / 1e9)
        self.metrics.gauge("lag_seconds").labels(self.label).set(age)

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None and n:
            self.metrics.counter(name).labels(self.label).inc(n)

    def _gauge_connected(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.gauge("connected").labels(self.label).set(value)


class ExportService:
    """Every configured collector's exporter, started and stopped with the bus."""

    def __init__(
        self, cfg: IpfixConfig, store_path: Path, data_dir: Path, metrics: ExportMetrics
    ) -> None:
        state_dir = data_dir / cfg.state_dir
        self.exporters = [
            Exporter(
                c,
                cfg,
                store_path,
                metrics=metrics,
                state=StateFile(state_dir / state_name(c)),
            )
            for c in cfg.collectors
        ]
        for e in self.exporters:
            e.start()

    def close(self) -> None:
        """Stop every exporter (each closes its session and saves its position)."""
        for e in self.exporters:
            e._stop.set()
        for e in self.exporters:
            e.stop()
