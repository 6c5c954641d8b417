"""The JetStream sink: a bus replica's accepted envelopes, published to the replicated stream.

Contract (the Sink protocol, appliance/bus/sink.py):
- Per (agent, key id) chain, the replica checks each record's links against the chain's runs
  held in the key-value bucket `chain_bucket` and writes the updated runs back with
  compare-and-set on the entry's revision (a concurrent update by another replica makes the
  write fail; the replica reloads and checks again). So every replica checks against the same
  runs: an envelope contradicting a neighbour accepted by any replica is CHAIN_BROKEN.
- Records are reserved in the chain before they are published. A publish that then fails leaves
  its seq in the runs without a message: the agent retransmits the same bytes (it had no OK),
  the chain says INSIDE, and the retransmission is published. A stored seq is never checked
  twice: INSIDE records are always published, the stream's message-id window and the store's
  unique (agent, key) index decide duplicate or not.
- Each record is published to `<subject_prefix>.<agent>` with `Nats-Msg-Id` = (agent, key)
  (appliance/bus/jetstream/naming.py) and awaited: the future completes only after the stream
  acknowledged every record of the submission (with replicas 3, a quorum of 2 has it on disk).
  An acknowledgement flagged duplicate is DUPLICATE, otherwise STORED.
- A refusal because the stream is full (max_bytes, discard new) fails the submission with
  SinkBusy("stream full", full_backoff_hint_ms); any other failure (no quorum, timeout, no
  connection) with SinkBusy("stream unavailable", 4 x backoff). The bus answers RETRY; part of
  the submission may be in the stream already, and the retransmission is deduplicated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from appliance.bus.chain import Chain, Verdict
from appliance.bus.jetstream import chainkv, naming
from appliance.bus.jetstream.config import JetStreamConfig
from appliance.bus.jetstream.loop import LoopThread
from appliance.bus.jetstream.stream import connect, declare
from appliance.bus.sink import SinkBusy
from appliance.bus.store import AgentSummary, CommitResult, Outcome, Record
from appliance.errors import CommandError

log = logging.getLogger(__name__)

#: Compare-and-set attempts on one chain entry before the submission is answered RETRY.
CAS_ATTEMPTS = 8
_ENVELOPE = 18  # index of the envelope bytes in a store row (store.COLUMNS)
_RECEIVED = 4
EXPECTED_STREAM = Header.EXPECTED_STREAM.value
STATUS_HEADER = Header.STATUS.value


class JetStreamSink:
    """A bus replica's sink on NATS JetStream (see the module docstring)."""

    def __init__(self, cfg: JetStreamConfig, backoff_hint_ms: int) -> None:
        self.cfg = cfg
        self._retry_hint_ms = backoff_hint_ms * 4
        self._loop = LoopThread("bus-jetstream")
        self._pending = 0
        self._lock = threading.Lock()
        self._failing: str | None = None
        self._chains: dict[str, tuple[Chain, int]] = {}
        self._chain_locks: dict[str, asyncio.Lock] = {}
        self._pending_acks: dict[int, _Pending] = {}
        self._next_batch = 0
        self._inbox = ""
        try:
            self._nc, self._kv = self._loop.run(self._open(), cfg.connect_timeout_s * 6)
            self._js = self._nc.jetstream(timeout=cfg.ack_timeout_s)
        except BaseException as exc:
            self._loop.stop()
            if isinstance(exc, CommandError):
                raise
            what = getattr(exc, "description", None) or exc or type(exc).__name__
            raise CommandError(f"cannot declare the JetStream stream {cfg.stream}: {what}") from exc
        self.published_total = 0

    async def _open(self) -> tuple[Client, KeyValue]:
        nc = await connect(self.cfg, "infraspectre-bus")
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*.*", cb=self._on_ack)
        # a node that has just started answers before the cluster has placed its streams:
        # declaring is tried again (bounded) until the cluster answers
        deadline = time.monotonic() + self.cfg.connect_timeout_s * 3
        try:
            while True:
                try:
                    kv = await declare(nc.jetstream(timeout=self.cfg.ack_timeout_s), self.cfg)
                    return nc, kv
                except (TimeoutError, APIError) as exc:
                    if time.monotonic() > deadline or isinstance(exc, BadRequestError):
                        raise
                    log.info("JetStream not ready yet (%s): trying again", _describe(exc))
                    await asyncio.sleep(0.5)
        except BaseException:
            await nc.close()
            raise

    # -- the Sink protocol ----------------------------------------------------------------------

    def submit(self, records: Sequence[Record]) -> Future[CommitResult]:
        with self._lock:
            self._pending += len(records)
        fut = self._loop.submit(self._submit(list(records)))
        fut.add_done_callback(lambda _f: self._done(len(records)))
        return fut

    def _done(self, n: int) -> None:
        with self._lock:
            self._pending -= n

    @property
    def pending_rows(self) -> int:
        return self._pending

    def healthy(self) -> bool:
        """Connected to NATS. A refused publish (a full stream) does not make a replica
        unready: every replica sees the same stream, and a load balancer that dropped them all
        would leave no publish to find out that the stream has room again."""
        return bool(self._nc.is_connected)

    @property
    def failure(self) -> str | None:
        if not self._nc.is_connected:
            return "not connected to NATS"
        return self._failing

    def agents(self) -> list[AgentSummary]:
        """A replica keeps no per-agent summary: the store consumer's store has them."""
        return []

    def size_bytes(self) -> int:
        return 0

    def close(self) -> None:
        try:
            self._loop.run(self._nc.close(), 10)
        except Exception as exc:  # closing: nothing is left to protect
            log.warning("closing the NATS connection: %s", exc)
        self._loop.stop()

    # -- on the loop ----------------------------------------------------------------------------

    async def _submit(self, records: list[Record]) -> CommitResult:
        outcomes: list[Outcome | None] = [None] * len(records)
        by_chain: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            agent, key_id = r.chain
            by_chain.setdefault(naming.chain_key(agent, key_id), []).append(i)
        try:
            for key, idx in by_chain.items():
                verdicts = await self._reserve(key, [records[i] for i in idx])
                for i, v in zip(idx, verdicts, strict=True):
                    outcomes[i] = v
            to_send = [i for i, o in enumerate(outcomes) if o is None]
            acks = await self._publish_all([records[i] for i in to_send])
        except SinkBusy as exc:
            self._note_failure(exc.reason)
            raise
        except (APIError, TimeoutError, OSError) as exc:
            reason = _describe(exc)
            self._note_failure(reason)
            if _is_full(exc):
                raise SinkBusy("stream full", self.cfg.full_backoff_hint_ms) from exc
            raise SinkBusy(f"stream unavailable: {reason}", self._retry_hint_ms) from exc
        except Exception as exc:  # nats-py's own errors (no connection, no responders, ...)
            reason = _describe(exc)
            self._note_failure(reason)
            raise SinkBusy(f"stream unavailable: {reason}", self._retry_hint_ms) from exc
        if self._failing is not None:
            log.info("JetStream accepts again after: %s", self._failing)
            self._failing = None
        for i, duplicate in zip(to_send, acks, strict=True):
            outcomes[i] = Outcome.DUPLICATE if duplicate else Outcome.STORED
        self.published_total += len(to_send)
        return CommitResult([o for o in outcomes if o is not None])

    def _note_failure(self, reason: str) -> None:
        if self._failing is None:
            log.warning("JetStream refused a publish: %s", reason)
        self._failing = reason

    async def _publish_all(self, records: list[Record]) -> list[bool]:
        """Publish records, each with its own reply subject under this sink's inbox, and wait
        for every acknowledgement (one future per submission, not per message: nats-py's
        request path costs more than the publish itself); per record, whether the stream
        flagged it a duplicate. Raises the stream's first error, or TimeoutError."""
        if not records:
            return []
        self._next_batch += 1
        number = self._next_batch
        batch = _Pending(self._loop.loop.create_future(), [False] * len(records), len(records))
        token = f"{self._inbox}.{number}"
        self._pending_acks[number] = batch
        try:
            for i, r in enumerate(records):
                agent, key_id = r.chain
                await self._nc.publish(
                    naming.subject(self.cfg.subject_prefix, agent),
                    bytes(r.row[_ENVELOPE]),
                    reply=f"{token}.{i}",
                    headers={
                        naming.MSG_ID_HEADER: naming.msg_id(agent, str(r.row[1])),
                        naming.KEY_ID_HEADER: key_id,
                        naming.RECEIVED_HEADER: str(r.row[_RECEIVED]),
                        EXPECTED_STREAM: self.cfg.stream,
                    },
                )
            return await asyncio.wait_for(batch.done, self.cfg.ack_timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no acknowledgement within {self.cfg.ack_timeout_s:g} s") from None
        finally:
            del self._pending_acks[number]

    async def _on_ack(self, msg: Msg) -> None:
        """A stream's answer to one published record (reply subject INBOX.<batch>.<index>)."""
        try:
            _, batch_no, index = msg.subject.rsplit(".", 2)
            batch = self._pending_acks.get(int(batch_no))
            i = int(index)
        except ValueError:
            return
        if batch is None or batch.done.done():
            return  # the submission timed out already: the agent retransmits
        status = (msg.headers or {}).get(STATUS_HEADER)
        try:
            answer = json.loads(msg.data) if msg.data else {}
        except ValueError:
            answer = {}
        if status == "503" or not isinstance(answer, dict) or not answer:
            batch.done.set_exception(NoStreamResponseError())
            return
        if "error" in answer:
            try:
                APIError.from_error(answer["error"])  # raises the error's class
            except APIError as exc:
                batch.done.set_exception(exc)
            except Exception:  # an error object without the fields nats-py expects
                batch.done.set_exception(APIError(description=str(answer["error"])))
            return
        batch.duplicates[i] = bool(answer.get("duplicate"))
        batch.left -= 1
        if batch.left == 0:
            batch.done.set_result(batch.duplicates)

    async def _load(self, key: str) -> tuple[Chain, int]:
        cached = self._chains.get(key)
        if cached is not None:
            return cached
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return Chain(), 0
        chain = chainkv.decode(entry.value or b"")
        return chain, int(entry.revision or 0)

    async def _reserve(self, key: str, records: list[Record]) -> list[Outcome | None]:
        """Check records against the chain and write it back with compare-and-set; per record
        CHAIN_BROKEN or None (to publish)."""
        lock = self._chain_locks.setdefault(key, asyncio.Lock())
        async with lock:
            for _ in range(CAS_ATTEMPTS):
                chain, revision = await self._load(key)
                work = chain.copy()
                verdicts: list[Outcome | None] = []
                changed = False
                for r in records:
                    verdict = work.check(r.seq, r.prev_sig, r.sig)
                    if verdict is Verdict.FITS:
                        work.add(r.seq, r.prev_sig, r.sig)
                        changed = True
                        verdicts.append(None)
                    elif verdict is Verdict.INSIDE:
                        verdicts.append(None)
                    else:
                        verdicts.append(Outcome.CHAIN_BROKEN)
                if not changed:
                    # a cached chain only ever lacks runs: INSIDE and BROKEN stay true
                    return verdicts
                value = chainkv.encode(work)
                try:
                    if revision == 0:
                        revision = await self._kv.create(key, value)
                    else:
                        revision = await self._kv.update(key, value, last=revision)
                except KeyWrongLastSequenceError:
                    self._chains.pop(key, None)  # another replica moved it: reload, check again
                    continue
                self._chains[key] = (work, revision)
                return verdicts
        raise SinkBusy("chain state contended", self._retry_hint_ms)


@dataclass
class _Pending:
    """One submission's acknowledgements still awaited."""

    done: asyncio.Future[list[bool]]
    duplicates: list[bool]
    left: int


def _is_full(exc: BaseException) -> bool:
    text = str(getattr(exc, "description", "") or exc).lower()
    return "maximum bytes" in text or "maximum messages" in text or "storage" in text


def _describe(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return str(description or exc or type(exc).__name__)
