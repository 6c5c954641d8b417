"""`infraspectre bus consume`: the stream, written into the SQLite store, idempotently.

Contract:
- A durable pull consumer (`jetstream.consumer`, explicit acks) reads the stream in order.
  Each fetched batch is decoded and submitted to a FlowStore (appliance/bus/store.py) as one
  group; its messages are acknowledged only after that commit. A crash between commit and
  acknowledgement redelivers them: the store's unique (agent, idempotency key) index answers
  DUPLICATE, so each record is stored once however often it is delivered, long after the
  stream's duplicate window.
- The store applies its own chain checks as for `sink: sqlite` (and records chain events and
  gaps); an outcome other than STORED or DUPLICATE (conflict, seq reused, chain broken, a
  message that is not an envelope of ours) is logged and counted, and the message is
  terminated: it is never redelivered, and never blocks the stream.
- A store failure (disk full, ...) leaves the batch unacknowledged: it is fetched again after
  `ack_wait_s` and retried: nothing uncommitted is ever acknowledged.
- `bus query`, `bus tail`, `bus agents` and `bus export ipfix` read that store as usual.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from appliance.bus.config import BusSettings
from appliance.bus.jetstream import naming
from appliance.bus.jetstream.stream import connect, declare
from appliance.bus.server import envelope_record
from appliance.bus.store import FlowStore, Outcome, Record, Retention
from appliance.errors import CommandError
from appliance.wire import Envelope

log = logging.getLogger(__name__)

#: Pause before a failed session starts again.
RESTART_PAUSE_S = 1.0


@dataclass
class ConsumeStats:
    """What a consumer did so far."""

    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    undecodable: int = 0
    batches: int = 0


class StoreConsumer:
    """Reads the stream into the store until stop() (or, with `until_idle`, until a fetch
    finds nothing)."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self.cfg = settings.eventbus.jetstream
        self.stats = ConsumeStats()
        self._stop = threading.Event()
        self._connected_once = False
        cfg = settings.eventbus
        self.store = FlowStore(
            settings.storage.data_dir / cfg.db_name,
            sync=cfg.db_sync,
            gap_settle_s=cfg.gap_settle_s,
            retention=Retention(cfg.retention_max_age_s, cfg.retention_max_bytes or 1 << 62),
        )

    def stop(self) -> None:
        """Make run() return after its current batch."""
        self._stop.set()

    def run(self, until_idle: bool = False) -> ConsumeStats:
        """Consume; returns the statistics. The store is closed on return."""
        try:
            asyncio.run(self._run(until_idle))
        finally:
            self.store.close()
        return self.stats

    async def _run(self, until_idle: bool) -> None:
        """Sessions until stopped: a session that fails (a node died, a leader moved, the
        connection dropped) is logged and started again; nothing unacknowledged is lost."""
        while not self._stop.is_set():
            try:
                if await self._session(until_idle):
                    return
            except CommandError as exc:
                if not self._connected_once:
                    raise  # a wrong address at start: say so and stop
                log.warning("consumer session failed, starting again: %s", exc)
                await asyncio.sleep(RESTART_PAUSE_S)
            except Exception as exc:
                log.warning("consumer session failed, starting again: %s", _describe(exc))
                await asyncio.sleep(RESTART_PAUSE_S)

    async def _session(self, until_idle: bool) -> bool:
        """One connection's worth of consuming; True when done (idle with until_idle)."""
        nc = await connect(self.cfg, "infraspectre-store-consumer")
        self._connected_once = True
        try:
            js = nc.jetstream(timeout=self.cfg.ack_timeout_s * 2)
            await declare(js, self.cfg, update=False)  # the replicas own the limits
            sub = await js.pull_subscribe_bind(durable=self.cfg.consumer, stream=self.cfg.stream)
            log.info(
                "consuming stream %s as %s into %s", self.cfg.stream, self.cfg.consumer,
                self.store.path,
            )  # fmt: skip
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(self.cfg.fetch_batch, timeout=1.0)
                except NatsTimeout:
                    if until_idle and await _drained(sub):
                        return True
                    continue
                await self._store(msgs)
            return True
        finally:
            await nc.close()

    async def _store(self, msgs: list[Msg]) -> None:
        records: list[Record] = []
        kept: list[Msg] = []
        for msg in msgs:
            record = _record(msg)
            if record is None:
                self.stats.undecodable += 1
                log.warning("stream message %s is not an envelope of ours: dropped", _seq(msg))
                await msg.term()
                continue
            records.append(record)
            kept.append(msg)
        if records:
            future = self.store.submit(records)
            try:
                result = await asyncio.wrap_future(future)
            except Exception as exc:  # not committed: leave unacknowledged, redelivered later
                log.error("store commit failed for %d records: %s", len(records), exc)
                await asyncio.sleep(1.0)
                return
            for record, outcome in zip(records, result.outcomes, strict=True):
                if outcome is Outcome.STORED:
                    self.stats.stored += 1
                elif outcome is Outcome.DUPLICATE:
                    self.stats.duplicates += 1
                else:
                    self.stats.refused += 1
                    log.warning(
                        "record %s of %s refused by the store: %s",
                        record.row[1], record.row[0], outcome.value,
                    )  # fmt: skip
            # acknowledged after the commit; a lost ack only means a redelivery (a DUPLICATE)
            await asyncio.gather(*(msg.ack() for msg in kept))
        self.stats.batches += 1


def _record(msg: Msg) -> Record | None:
    headers = msg.headers or {}
    try:
        env = Envelope.FromString(msg.data)
        key_id = headers[naming.KEY_ID_HEADER]
        received = int(headers[naming.RECEIVED_HEADER])
    except (DecodeError, KeyError, ValueError):
        return None
    if not env.agent_id or not env.idempotency_key:
        return None
    return envelope_record(env, msg.data, received, key_id)


async def _drained(sub: JetStreamContext.PullSubscription) -> bool:
    """Nothing left for this consumer: no message pending, none delivered and unacknowledged
    (one fetched by a session that died comes back after the ack wait)."""
    info = await sub.consumer_info()
    return not info.num_pending and not info.num_ack_pending


def _describe(exc: BaseException) -> str:
    return str(getattr(exc, "description", None) or exc or type(exc).__name__)


def _seq(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:
        return "?"
