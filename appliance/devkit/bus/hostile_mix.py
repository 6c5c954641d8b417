"""The hostile mix of `bench bus --hostile`: what a buggy, old or stolen box (or anyone holding a
certificate of the org CA) can send the bus, run in a child process beside the legitimate load.

Attack classes and their kinds (each kind is counted apart):

- `stalled`: calls that send their headers and never a message. A unary call is a one-message
  stream on the wire, so a stream-unary call whose request iterator blocks is, to the bus, a
  Publish/PublishBatch whose body never arrives. Half come from a name that is not in the trust
  map (`untrusted`), half from a trusted one (`trusted`); `--stalled` of them are held open at
  once, a call that ends is replaced (up to 4x that many calls in all), and every one still open
  when the phase ends is cancelled by us and counted `HELD`.
- `garbage`: random bytes, truncated and bit-flipped envelopes (`publish`) and batches (`batch`),
  alternately from the trusted and the untrusted name.
- `oversized`: a validly signed envelope over max_env_bytes by Publish (`envelope_publish`) and in
  a batch (`envelope_batch`); max_batch + 1 small signed envelopes (`batch_count`); max_batch
  envelopes of exactly max_env_bytes (`batch_at_limits`, bad signatures, so nothing in it may be
  stored; within max_batch x max_env_bytes, it must get an answer per envelope); a batch 25% over
  max_batch x max_env_bytes (`batch_over_cap`).
- `untrusted`: a name the org CA signed but the trust map does not hold, sending batches of
  `--untrusted-mb` (`big_batch`, a few at once, each on its own connection) and single envelopes
  (`publish`).
- `poison`: validly signed envelopes (their own trusted agent) that the store cannot hold or that
  are out of range: port 70000, VLAN 99999, an address that is not one, timestamps in 1970, the
  same idempotency key with different content (`idempotency_conflict`, after its
  `conflict_original`), and last, because today's store writer dies on them, unsigned 64-bit
  values of 2^63 and more. One call each, in that order.

Every outcome is a call's gRPC status name (`OK` when answered) in `codes`, and for answered calls
each envelope's ack status in `acks`. Every call carries a timeout; a class sends its whole count
unless the phase's wall-clock bound passes first; the stalled calls are held until every class
has finished and the legitimate load is done (`legit_done`).
"""

from __future__ import annotations

import contextlib
import random
import resource
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ATTACKS = ("stalled", "garbage", "oversized", "untrusted", "poison")
#: Stalled calls share a connection up to this many (several connections, as several boxes).
STALLED_PER_CONNECTION = 50
#: Stalled calls that end are replaced, up to this many times the number held open.
STALLED_REOPEN_FACTOR = 4
#: How often the stalled-call keeper looks for calls that ended.
STALLED_POLL_S = 0.25
#: After opening the stalled calls, time for the bus to have taken them in before "ready".
STALLED_SETTLE_S = 1.0
#: How long the hostile process may take to build its payloads and open its stalled calls.
SETUP_BOUND_S = 120.0
#: At most this many poison calls (one call each, sent one after another).
POISON_CALLS_MAX = 12
U63 = 2**63
U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Peer:
    """One client identity: its certificate files and (for signing) its Ed25519 key."""

    agent_id: str
    cert: Path
    key: Path
    signing_key: Path


@dataclass(frozen=True)
class MixPlan:
    """Everything the child process needs (picklable: it crosses a spawn boundary)."""

    target: str
    ca: Path
    trusted: Peer
    poisoner: Peer
    untrusted: Peer
    attacks: tuple[str, ...]
    stalled: int
    garbage: int
    oversized_rounds: int
    untrusted_calls: int
    untrusted_parallel: int
    untrusted_mb: float
    max_batch: int
    max_env_bytes: int
    call_timeout_s: float
    phase_timeout_s: float
    poison_last: bool
    seed: int


def after_go_bound_s(plan: MixPlan) -> float:
    """The longest the mix runs after "go": the phase, then the poison calls one by one (all of
    them may wait their full timeout on a wedged bus), then a few calls still in flight."""
    return plan.phase_timeout_s + (POISON_CALLS_MAX + 4) * plan.call_timeout_s


@dataclass
class Tally:
    """Outcomes per class and kind; thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: dict[tuple[str, str], int] = field(default_factory=Counter)
    codes: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    acks: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)

    def add(self, cls: str, kind: str, code: str, acks: list[str] | None = None) -> None:
        with self.lock:
            self.calls[cls, kind] += 1
            self.codes.setdefault((cls, kind), Counter())[code] += 1
            if acks:
                self.acks.setdefault((cls, kind), Counter()).update(acks)

    def as_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.lock:
            out: dict[str, dict[str, dict[str, Any]]] = {}
            for (cls, kind), n in sorted(self.calls.items()):
                out.setdefault(cls, {})[kind] = {
                    "calls": n,
                    "codes": dict(sorted(self.codes[cls, kind].items())),
                    "acks": dict(sorted(self.acks.get((cls, kind), Counter()).items())),
                }
            return out


def channel(target: str, ca: Path, peer: Peer) -> grpc.Channel:
    """A channel on its own connection (no subchannel sharing), with no message size limit on
    our side: the bus's own limits are what is being measured."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=peer.key.read_bytes(),
        certificate_chain=peer.cert.read_bytes(),
    )
    options = [
        ("grpc.ssl_target_name_override", "localhost"),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.secure_channel(target, creds, options=options)


def parse_acks(method: str, raw: bytes) -> list[str]:
    """The ack statuses in an answer of method ("publish" or "batch")."""
    from google.protobuf.message import DecodeError

    from appliance.wire import PublishAck, PublishBatchResponse

    try:
        if method == "publish":
            return [PublishAck.Status.Name(PublishAck.FromString(raw).status)]
        return [PublishAck.Status.Name(a.status) for a in PublishBatchResponse.FromString(raw).acks]
    except (DecodeError, ValueError):
        return ["unparseable_answer"]


class _Caller:
    """Unary calls on one channel, each counted in the tally."""

    def __init__(self, ch: grpc.Channel, tally: Tally, timeout_s: float) -> None:
        from appliance.wire import PUBLISH_BATCH_METHOD, PUBLISH_METHOD

        self._calls = {
            "publish": ch.unary_unary(PUBLISH_METHOD, None, None),
            "batch": ch.unary_unary(PUBLISH_BATCH_METHOD, None, None),
        }
        self._tally = tally
        self._timeout = timeout_s

    def send(self, method: str, cls: str, kind: str, payload: bytes) -> str:
        """Send payload to method; count and return the call's status name."""
        try:
            raw = self._calls[method](payload, timeout=self._timeout)
        except grpc.RpcError as err:
            name = err.code().name
            self._tally.add(cls, kind, name)
            return name
        self._tally.add(cls, kind, "OK", parse_acks(method, raw))
        return "OK"


def _never(release: threading.Event, bound_s: float) -> Iterator[bytes]:
    """A request iterator that yields nothing until released (or bound_s passes)."""
    release.wait(bound_s)
    yield from ()


class StalledCalls:
    """Keeps `n` message-less calls open against the bus until stop(); see the module doc."""

    def __init__(self, plan: MixPlan, tally: Tally) -> None:
        from appliance.wire import PUBLISH_BATCH_METHOD, PUBLISH_METHOD

        self._plan = plan
        self._tally = tally
        self._release = threading.Event()
        self._stopping = threading.Event()
        self._channels: list[grpc.Channel] = []
        #: (kind, multicallable) for each slot
        self._slots: list[tuple[str, Any]] = []
        half = plan.stalled // 2
        for kind, peer, n in (
            ("untrusted", plan.untrusted, plan.stalled - half),
            ("trusted", plan.trusted, half),
        ):
            for lo in range(0, n, STALLED_PER_CONNECTION):
                ch = channel(plan.target, plan.ca, peer)
                self._channels.append(ch)
                for i in range(lo, min(n, lo + STALLED_PER_CONNECTION)):
                    method = PUBLISH_BATCH_METHOD if i % 2 == 0 else PUBLISH_METHOD
                    self._slots.append((kind, ch.stream_unary(method, None, None)))
        self._open: list[Any] = [None] * len(self._slots)
        self.opened = 0
        self._max_calls = STALLED_REOPEN_FACTOR * max(plan.stalled, 1)
        # a stalled call must outlive the whole mix: it ends when stop() cancels it
        self._bound_s = SETUP_BOUND_S + after_go_bound_s(plan) + 30
        self._keeper = threading.Thread(target=self._keep, name="mix-stalled", daemon=True)

    def start(self, connect_timeout_s: float) -> None:
        """Connect, open every call, and keep them open in the background."""
        deadline = time.monotonic() + connect_timeout_s
        for ch in self._channels:
            # a refused connection is an outcome too: its calls fail and are counted
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(ch).result(timeout=max(0.1, deadline - time.monotonic()))
        for i in range(len(self._slots)):
            self._open_slot(i)
        self._keeper.start()
        time.sleep(STALLED_SETTLE_S)

    def _open_slot(self, i: int) -> None:
        # the iterator outwaits the deadline: were it to end first, the call would be a
        # message-less half-close (a different attack, answered "requires exactly one request")
        self._open[i] = self._slots[i][1].future(
            _never(self._release, self._bound_s + 60), timeout=self._bound_s
        )
        self.opened += 1

    def _keep(self) -> None:
        while not self._stopping.wait(STALLED_POLL_S):
            for i, fut in enumerate(self._open):
                if fut is None or not fut.done():
                    continue
                self._record(i, fut, held=False)
                self._open[i] = None
                if self.opened < self._max_calls and not self._stopping.is_set():
                    self._open_slot(i)

    def _record(self, i: int, fut: Any, *, held: bool) -> None:
        kind = self._slots[i][0]
        if held:
            self._tally.add("stalled", kind, "HELD")
            return
        code = fut.code()
        name = code.name if code is not None else "UNKNOWN"
        self._tally.add(
            "stalled", kind, name, parse_acks("batch", fut.result()) if name == "OK" else None
        )

    def stop(self) -> None:
        """Cancel every call still open (counted HELD), release the iterators, close."""
        self._stopping.set()
        if self._keeper.is_alive():
            self._keeper.join(timeout=10)
        for i, fut in enumerate(self._open):
            if fut is None:
                continue
            if fut.cancel():
                self._record(i, fut, held=True)
            else:  # it ended by itself since the keeper last looked
                self._record(i, fut, held=False)
            self._open[i] = None
        self._release.set()
        for ch in self._channels:
            ch.close()


class HostileMix:
    """The child's work: build every payload, open the stalled calls, then run the classes."""

    def __init__(self, plan: MixPlan) -> None:
        self.plan = plan
        self.tally = Tally()
        self.rng = random.Random(plan.seed)
        self.errors: list[str] = []
        #: idempotency keys per class of envelopes that must never be stored
        self.hostile_keys: dict[str, set[str]] = {}
        #: the conflicting key and the bytes of the first envelope sent with it
        self.conflict: tuple[str, str, bytes] | None = None
        self._channels: list[grpc.Channel] = []
        self._stalled: StalledCalls | None = None
        self._payloads: dict[str, Any] = {}
        #: from "go" until every class but the stalled calls had finished
        self.mix_seconds = 0.0

    # -- building -------------------------------------------------------------------------------

    def prepare(self, connect_timeout_s: float) -> None:
        """Everything before the clock: payloads built, connections up, stalled calls open."""
        attacks = self.plan.attacks
        if "garbage" in attacks:
            self._payloads["garbage"] = self._garbage_payloads()
        if "oversized" in attacks:
            self._payloads["oversized"] = self._oversized_payloads()
        if "untrusted" in attacks:
            self._payloads["untrusted"] = self._untrusted_payloads()
        if "poison" in attacks:
            self._payloads["poison"] = self._poison_payloads()
        if "stalled" in attacks and self.plan.stalled > 0:
            self._stalled = StalledCalls(self.plan, self.tally)
            self._stalled.start(connect_timeout_s)

    def _flow(self, **fields: Any) -> Any:
        from appliance.wire import FlowEvent

        now_ms = time.time_ns() // 1_000_000
        base: dict[str, Any] = {
            "src_ip": "192.0.2.66", "dst_ip": "203.0.113.9", "src_port": 40000, "dst_port": 443,
            "proto": "TCP", "bytes_tx": 1200, "bytes_rx": 800, "packets_tx": 4, "packets_rx": 3,
            "start_time": now_ms - 60_000, "end_time": now_ms - 1_000, "ip_version": 4,
        }  # fmt: skip
        base.update(fields)
        return FlowEvent(**base)

    def _envelope(self, peer: Peer, seq: int, *, pad: int = 0, **flow: Any) -> Any:
        from appliance.wire import ENVELOPE_VERSION, Envelope

        if pad:
            flow["interface"] = "x" * pad
        return Envelope(
            version=ENVELOPE_VERSION, ts_ns=time.time_ns(), idempotency_key=uuid.uuid4().hex,
            agent_id=peer.agent_id, seq=seq, flow=self._flow(**flow), sig=bytes(64),
        )  # fmt: skip

    def _sized(self, peer: Peer, size: int) -> Any:
        """An envelope (sig: 64 zero bytes) whose serialized size is exactly size."""
        env = self._envelope(peer, 1, pad=1)
        for _ in range(8):
            missing = size - env.ByteSize()
            if missing == 0:
                return env
            env.flow.interface = "x" * max(1, len(env.flow.interface) + missing)
        raise RuntimeError(f"cannot build an envelope of exactly {size} bytes")

    def _signer(self, peer: Peer) -> Callable[[Any], bytes]:
        from appliance.crypto import load_signing_key, sign_envelope

        key = load_signing_key(peer.signing_key)

        def sign(env: Any) -> bytes:
            sign_envelope(env, key)
            return bytes(env.SerializeToString())

        return sign

    def _garbage_payloads(self) -> list[tuple[str, bytes]]:
        from appliance.wire.framing import frame_batch

        sign = self._signer(self.plan.trusted)
        sample = sign(self._envelope(self.plan.trusted, 1))
        framed = frame_batch([sample])
        out: list[tuple[str, bytes]] = []
        for i in range(self.plan.garbage):
            method = "publish" if i % 2 == 0 else "batch"
            valid = sample if method == "publish" else framed
            flavor = ("random", "truncated", "bitflip", "empty")[(i // 2) % 4]
            if flavor == "random":
                body = self.rng.randbytes(self.rng.randint(1, 4096))
            elif flavor == "truncated":
                body = valid[: self.rng.randint(1, len(valid) - 1)]
            elif flavor == "bitflip":
                at = self.rng.randrange(len(valid))
                body = (
                    valid[:at] + bytes([valid[at] ^ (1 << self.rng.randrange(8))]) + valid[at + 1 :]
                )
            else:
                body = b""
            out.append((method, body))
        return out

    def _oversized_payloads(self) -> list[tuple[str, str, bytes]]:
        from appliance.wire.framing import frame_batch

        p = self.plan
        sign = self._signer(p.trusted)
        keys = self.hostile_keys.setdefault("oversized", set())
        big = self._sized(p.trusted, p.max_env_bytes + 1024)
        keys.add(big.idempotency_key)
        big_raw = sign(big)
        small = [self._envelope(p.trusted, 1) for _ in range(p.max_batch + 1)]
        keys.update(e.idempotency_key for e in small)
        at_limit = self._sized(p.trusted, p.max_env_bytes)  # bad signature: never storable
        keys.add(at_limit.idempotency_key)
        at_limit_raw = bytes(at_limit.SerializeToString())
        over_cap_n = -(-int(p.max_batch * p.max_env_bytes * 1.25 + 65536) // len(at_limit_raw))
        return [
            ("publish", "envelope_publish", big_raw),
            ("batch", "envelope_batch", frame_batch([big_raw])),
            ("batch", "batch_count", frame_batch([sign(e) for e in small])),
            ("batch", "batch_at_limits", frame_batch([at_limit_raw] * p.max_batch)),
            ("batch", "batch_over_cap", frame_batch([at_limit_raw] * over_cap_n)),
        ]

    def _untrusted_payloads(self) -> dict[str, bytes]:
        from appliance.wire.framing import frame_batch

        p = self.plan
        sign = self._signer(p.untrusted)
        one = sign(self._envelope(p.untrusted, 1, pad=max(1, p.max_env_bytes // 2)))
        n = max(1, int(p.untrusted_mb * 1024 * 1024) // len(one))
        return {
            "big_batch": frame_batch([one] * n),
            "publish": sign(self._envelope(p.untrusted, 2)),
        }

    def _poison_payloads(self) -> list[tuple[str, bytes]]:
        """(kind, envelope bytes), signed and chained by the poisoner, writer-killers last."""
        from appliance.wire.framing import frame_batch

        p = self.plan
        sign = self._signer(p.poisoner)
        keys = self.hostile_keys.setdefault("poison", set())
        out: list[tuple[str, bytes]] = []
        prev = b""
        seq = 0

        def chained(kind: str, env: Any, *, hostile: bool = True) -> Any:
            nonlocal prev
            env.prev_sig = prev
            raw = sign(env)
            prev = env.sig
            out.append((kind, frame_batch([raw])))
            if hostile:
                keys.add(env.idempotency_key)
            return raw

        def nxt(**flow: Any) -> Any:
            nonlocal seq
            seq += 1
            return self._envelope(p.poisoner, seq, **flow)

        original = nxt()
        before = prev
        first = chained("conflict_original", original, hostile=False)
        conflict = nxt(bytes_tx=original.flow.bytes_tx + 1)
        conflict.idempotency_key, conflict.seq = original.idempotency_key, original.seq
        seq -= 1
        prev = before
        chained("idempotency_conflict", conflict, hostile=False)
        prev = original.sig  # the chain continues from what the bus should have kept
        self.conflict = (p.poisoner.agent_id, original.idempotency_key, first)
        chained("src_port_70000", nxt(src_port=70000))
        chained("vlan_99999", nxt(vlan=99999))
        chained("src_ip_not_an_ip", nxt(src_ip="not-an-ip"))
        old = nxt(start_time=1_000, end_time=2_000)
        old.ts_ns = 1_000_000_000  # 1970-01-01T00:00:01Z
        chained("timestamps_1970", old)
        chained("bytes_tx_2^63", nxt(bytes_tx=U63))
        chained("packets_rx_2^64-1", nxt(packets_rx=U64_MAX))
        chained("start_time_2^63", nxt(start_time=U63, end_time=U63))
        high_seq = nxt()
        high_seq.seq = U63
        chained("seq_2^63", high_seq)
        assert len(out) <= POISON_CALLS_MAX
        return out

    # -- running --------------------------------------------------------------------------------

    def run(self, legit_done: Any) -> None:
        """Run every enabled class to its count (bounded by the phase), then wait until the
        legitimate load is done; with poison_last the poison is sent only after all that."""
        started = time.monotonic()
        deadline = started + self.plan.phase_timeout_s

        def over() -> bool:  # each class sends its whole count unless the phase's bound passes
            return time.monotonic() > deadline

        workers: list[Callable[[], None]] = []
        if "garbage" in self._payloads:
            workers.append(lambda: self._run_garbage(over))
        if "oversized" in self._payloads:
            workers.append(lambda: self._run_oversized(over))
        if "untrusted" in self._payloads:
            counter = iter(range(self.plan.untrusted_calls))
            lock = threading.Lock()

            def take() -> bool:
                with lock:
                    return next(counter, None) is not None

            for _ in range(max(1, self.plan.untrusted_parallel)):
                workers.append(lambda: self._run_untrusted(over, take))
        poison = "poison" in self._payloads
        if poison and not self.plan.poison_last:
            workers.append(self._run_poison)
        threads = [
            threading.Thread(target=self._guard, args=(w,), name="mix", daemon=True)
            for w in workers
        ]
        for t in threads:
            t.start()
        limit = started + after_go_bound_s(self.plan)
        for t in threads:
            t.join(timeout=max(0.0, limit - time.monotonic()))
            if t.is_alive():
                self.errors.append("a hostile sender did not finish within its bound")
        self.mix_seconds = time.monotonic() - started
        if not legit_done.wait(max(0.0, deadline + self.plan.call_timeout_s - time.monotonic())):
            self.errors.append("the legitimate load was not done by the phase's bound")
        if poison and self.plan.poison_last:
            self._guard(self._run_poison)

    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # report, never hang the bench
            self.errors.append(f"hostile sender failed: {type(exc).__name__}: {exc}")

    def _caller(self, peer: Peer) -> _Caller:
        ch = channel(self.plan.target, self.plan.ca, peer)
        self._channels.append(ch)
        return _Caller(ch, self.tally, self.plan.call_timeout_s)

    def _run_garbage(self, over: Callable[[], bool]) -> None:
        callers = [self._caller(self.plan.trusted), self._caller(self.plan.untrusted)]
        for i, (method, body) in enumerate(self._payloads["garbage"]):
            if over():
                return
            callers[(i // 2) % 2].send(method, "garbage", method, body)

    def _run_oversized(self, over: Callable[[], bool]) -> None:
        caller = self._caller(self.plan.trusted)
        for _ in range(self.plan.oversized_rounds):
            for method, kind, body in self._payloads["oversized"]:
                if over():
                    return
                caller.send(method, "oversized", kind, body)

    def _run_untrusted(self, over: Callable[[], bool], take: Callable[[], bool]) -> None:
        caller = self._caller(self.plan.untrusted)
        payloads = self._payloads["untrusted"]
        while not over() and take():
            caller.send("batch", "untrusted", "big_batch", payloads["big_batch"])
            caller.send("publish", "untrusted", "publish", payloads["publish"])

    def _run_poison(self) -> None:
        caller = self._caller(self.plan.poisoner)
        for kind, body in self._payloads["poison"]:
            caller.send("batch", "poison", kind, body)

    def close(self) -> None:
        """Cancel the stalled calls (counted HELD) and close every connection."""
        if self._stalled is not None:
            self._stalled.stop()
        for ch in self._channels:
            ch.close()

    def report(self) -> dict[str, Any]:
        return {
            "attacks": self.tally.as_dict(),
            "stalled_opened": self._stalled.opened if self._stalled else 0,
            "mix_seconds": round(self.mix_seconds, 3),
            "process_cpu_s": round(time.process_time(), 3),
            "process_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
            "hostile_keys": {k: sorted(v) for k, v in self.hostile_keys.items()},
            "conflict": self.conflict,
            "errors": self.errors,
        }


def run_child(plan: MixPlan, ready: Any, go: Any, legit_done: Any, results: Any) -> None:
    """Entry point of the hostile process (multiprocessing, spawn): prepare, say ready, wait for
    go, run, put one report dict on results. Never raises; never waits without a bound."""
    mix = HostileMix(plan)
    report: dict[str, Any] = {}
    try:
        mix.prepare(connect_timeout_s=plan.call_timeout_s)
        ready.set()
        if go.wait(SETUP_BOUND_S):
            mix.run(legit_done)
        else:
            mix.errors.append("never told to start")
    except Exception as exc:
        mix.errors.append(f"hostile process failed: {type(exc).__name__}: {exc}")
    finally:
        try:
            mix.close()
        finally:
            report = mix.report()
            results.put(report)
