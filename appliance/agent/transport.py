"""The forwarder's edge: publishing one batch of sealed envelopes to one bus address.

`Transport` is what the forwarder calls; `GrpcTransport` is the real one (mTLS gRPC, the
batched RPC). Envelopes travel as the exact bytes that were sealed and stored in the WAL
(wire.framing), so a retransmission is byte-identical by construction.

Failures are classified once, here, into `TransportError.kind`:

- `unavailable`: no connection (bus down, network, timeout): retry with backoff, fail over;
- `tls`: the handshake failed (the bus's certificate is not from our CA, or ours was refused);
- `denied`: the bus knows us not (PERMISSION_DENIED / UNAUTHENTICATED);
- `exhausted`: RESOURCE_EXHAUSTED, with the bus's `retry-after-ms` when it sent one;
- `rejected`: the bus could not take the batch itself (INVALID_ARGUMENT: undecodable, too big);
- `failed`: anything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from appliance.wire import BUS_TIME_KEY, PUBLISH_BATCH_METHOD, PublishAck, PublishBatchResponse
from appliance.wire.channel import mtls_channel
from appliance.wire.framing import frame_batch


class TransportError(Exception):
    """A publish attempt failed as a whole; kind says how (see the module docstring)."""

    def __init__(self, kind: str, detail: str, retry_after_ms: int = 0) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry_after_ms = retry_after_ms


class Transport(Protocol):
    """Publishes batches to one bus address.

    publish() returns one ack per payload, in order, or raises TransportError; it never returns
    a partial answer. close() releases the connection; the forwarder calls it before failing over.
    """

    address: str

    def publish(self, payloads: Sequence[bytes], timeout: float) -> list[PublishAck]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Identity:
    """The agent's TLS identity and the CA it trusts for the bus."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None


def classify(err: grpc.RpcError) -> TransportError:
    """Map a gRPC failure to a TransportError kind."""
    code = err.code()
    detail = err.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        low = detail.lower()
        if "handshake" in low or "certificate" in low or "ssl" in low or "tls" in low:
            return TransportError("tls", detail)
        return TransportError("unavailable", detail)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError("unavailable", "deadline exceeded")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return TransportError("denied", detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        metadata: Any = err.trailing_metadata() or ()  # grpc-stubs: tuple of (key, value)
        trailing: dict[str, object] = {str(k): v for k, v in metadata}
        try:
            hint = int(str(trailing.get("retry-after-ms", 0)))
        except (TypeError, ValueError):
            hint = 0
        return TransportError("exhausted", detail, hint)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return TransportError("rejected", detail)
    return TransportError("failed", f"{code.name}: {detail}")


class GrpcTransport:
    """The batched RPC over mTLS to one address (host:port).

    on_time, when given, hears the bus's clock after each answered call:
    on_time(bus_ns, sent_ns, received_ns) with our clock before and after the call.
    """

    def __init__(
        self,
        address: str,
        identity: Identity,
        on_time: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.address = address
        self._on_time = on_time
        self._channel = mtls_channel(
            address,
            ca=identity.ca,
            cert=identity.cert,
            key=identity.key,
            server_name=identity.server_name,
        )
        self._call = self._channel.unary_unary(PUBLISH_BATCH_METHOD, None, None)

    def publish(self, payloads: Sequence[bytes], timeout: float) -> list[PublishAck]:
        request = frame_batch(payloads)
        sent = time.time_ns()
        try:
            raw, call = self._call.with_call(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as err:
            raise classify(err) from None
        if self._on_time is not None:
            self._hear_time(call, sent, time.time_ns())
        acks = list(PublishBatchResponse.FromString(raw).acks)
        if len(acks) != len(payloads):
            raise TransportError("failed", f"bus answered {len(acks)} acks for {len(payloads)}")
        return acks

    def _hear_time(self, call: Any, sent: int, received: int) -> None:
        assert self._on_time is not None
        for key, value in call.trailing_metadata() or ():
            if key == BUS_TIME_KEY:
                text = str(value)
                if text.isdigit():  # anything else: a bus without a usable stamp
                    self._on_time(int(text), sent, received)
                return

    def close(self) -> None:
        self._channel.close()
