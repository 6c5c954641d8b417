"""Connecting to the cluster and declaring the stream and the chain bucket (idempotent: every
bus replica and every store consumer does it at start; the first creates, the others find)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from appliance.bus.jetstream.config import JetStreamConfig
from appliance.errors import CommandError

log = logging.getLogger(__name__)


async def connect(cfg: JetStreamConfig, name: str) -> Client:
    """A client that fails over between cfg.servers and, once connected, reconnects for ever.

    The first connection must succeed within 2 x connect_timeout_s (nats-py would otherwise
    retry it for ever with reconnects unlimited): CommandError naming the servers.
    """
    nc = Client()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=cfg.servers,
                name=name,
                # nats-py annotates these int; they are seconds handed to asyncio (floats work)
                connect_timeout=cast(int, cfg.connect_timeout_s),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=cast(int, 0.25),
                error_cb=_log_error,
            ),
            cfg.connect_timeout_s * 2,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "nobody answered"
        with contextlib.suppress(Exception):
            await nc.close()
        what = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach NATS at {', '.join(cfg.servers)}: {what}") from exc
    return nc


async def _log_error(exc: Exception) -> None:
    """One line per connection error (nats-py's default prints a traceback each time)."""
    log.warning("NATS: %s", exc or type(exc).__name__)


def stream_config(cfg: JetStreamConfig) -> api.StreamConfig:
    """The stream: file storage; interest retention (a message is kept until every declared
    consumer acknowledged it, the store consumer at least), bounded by age and bytes; discard
    new (a full stream refuses new messages, it never drops unconsumed ones); message-id
    deduplication within the duplicate window."""
    return api.StreamConfig(
        name=cfg.stream,
        subjects=[f"{cfg.subject_prefix}.>"],
        retention=api.RetentionPolicy.INTEREST,
        discard=api.DiscardPolicy.NEW,
        storage=api.StorageType.FILE,
        num_replicas=cfg.replicas,
        max_age=cfg.max_age_s,
        max_bytes=cfg.max_bytes,
        duplicate_window=cfg.duplicate_window_s,
    )


#: JetStream's "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058


def consumer_config(cfg: JetStreamConfig) -> api.ConsumerConfig:
    """The store consumer: durable, pull, explicit acknowledgements."""
    return api.ConsumerConfig(
        durable_name=cfg.consumer,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=cfg.fetch_batch * 4,
        deliver_policy=api.DeliverPolicy.ALL,
    )


async def declare(js: JetStreamContext, cfg: JetStreamConfig, update: bool = True) -> KeyValue:
    """Create (or bring to cfg) the stream and the store consumer; create or open the chain
    bucket. The replicas declare the consumer too: with interest retention a message published
    before any consumer existed would be dropped at once. With update (the replicas), a stream
    that exists with other limits is brought to cfg: the replicas' configuration is the one in
    force; without it (the store consumer) an existing stream is left as it is."""
    wanted = stream_config(cfg)
    try:
        await js.add_stream(wanted)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise CommandError(f"cannot create the stream {cfg.stream}: {exc.description}") from exc
        if update:
            log.info("stream %s exists with other limits: updating it", cfg.stream)
            await js.update_stream(wanted)
    try:
        await js.add_consumer(cfg.stream, consumer_config(cfg))
    except BadRequestError as exc:  # it exists with other settings: it keeps its messages
        log.warning(
            "store consumer %s exists with other settings (%s): left as it is",
            cfg.consumer, exc.description,
        )  # fmt: skip
    return await js.create_key_value(
        api.KeyValueConfig(
            bucket=cfg.chain_bucket,
            history=1,
            replicas=cfg.replicas,
            storage=api.StorageType.FILE,
        )
    )
