"""Client side of the wire: an mTLS channel to the bus and its stub.

Used by anything that publishes (the agent's forwarder, the demo, the benches). The channel pins
the org CA as the only root, presents the agent's client certificate, and can override the
name checked against the server certificate (a bus reached by IP through a tunnel).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from appliance.errors import CommandError
from appliance.wire._generated import eventbus_pb2_grpc as pb_grpc

#: Channel options: large batches, keepalive so a dead bus is noticed within ~30 s.
DEFAULT_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror}") from exc


def mtls_channel(
    target: str,
    *,
    ca: Path,
    cert: Path,
    key: Path,
    server_name: str | None = None,
) -> grpc.Channel:
    """A secure channel to target presenting cert/key and trusting only ca."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate"),
        private_key=_read(key, "client key"),
        certificate_chain=_read(cert, "client certificate"),
    )
    options: list[tuple[str, object]] = list(DEFAULT_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, creds, options=options)


def eventbus_stub(channel: grpc.Channel) -> pb_grpc.EventBusStub:
    """The generated EventBus stub on channel."""
    return pb_grpc.EventBusStub(channel)  # type: ignore[no-untyped-call]
