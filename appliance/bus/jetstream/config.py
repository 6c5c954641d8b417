"""The `eventbus.jetstream` section: where the NATS cluster is and how the stream is shaped.

```yaml
eventbus:
  sink: jetstream
  jetstream:
    servers: ["nats://nats-1.example.net:4222", "nats://nats-2.example.net:4222"]
    replicas: 3
    max_age_s: 604800          # retention by age (7 days)
    max_bytes: 10737418240     # retention by size; a full stream answers RETRY
```

Strict like every section: unknown keys are errors naming their path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass
class JetStreamConfig:
    """Where the NATS servers are, the stream, the chain-state bucket and the store consumer."""

    #: NATS server URLs; the client fails over between them (and learns the cluster's others).
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    stream: str = "INFRASPECTRE"
    #: Envelopes go to `<subject_prefix>.<agent>` (the agent id made subject-safe).
    subject_prefix: str = "infraspectre.env"
    #: Copies of every message (and of the chain bucket): 3 survives the loss of one node.
    replicas: int = 3
    #: Retention by age: messages older than this are dropped from the stream (the store
    #: consumer must never be behind by this much).
    max_age_s: float = 7 * 86400.0
    #: Retention by size: past it the stream refuses new messages (discard new): RETRY.
    max_bytes: int = 10 << 30
    #: JetStream deduplicates a Nats-Msg-Id seen within this window; past it the store's
    #: unique (agent, key) index does.
    duplicate_window_s: float = 120.0
    #: A publish not acknowledged by the stream within this is answered RETRY.
    ack_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    #: The key-value bucket holding each agent key's chain runs (compare-and-set updates).
    chain_bucket: str = "infraspectre-chains"
    #: The durable pull consumer `bus consume` reads with.
    consumer: str = "store"
    #: A message fetched by the store consumer and not acknowledged within this (the consumer
    #: died, its commit stalls) is delivered again (the store answers it DUPLICATE if stored).
    ack_wait_s: float = 30.0
    #: Messages fetched (and committed to the store in one group) at a time by `bus consume`.
    fetch_batch: int = 1000
    #: Backoff hint of a RETRY because the stream is full.
    full_backoff_hint_ms: int = 2000

    def validate(self) -> None:
        if not self.servers:
            raise ValueError("servers: at least one NATS URL is needed")
        for i, url in enumerate(self.servers):
            if not re.match(r"^(nats|tls)://[^\s/]+:\d{1,5}$", url):
                raise ValueError(f"servers[{i}]: {url!r} is not nats://HOST:PORT")
        if not _NAME.match(self.stream):
            raise ValueError(f"stream: {self.stream!r} must be 1-64 of A-Z a-z 0-9 _ -")
        if not _SUBJECT.match(self.subject_prefix):
            raise ValueError(f"subject_prefix: {self.subject_prefix!r} is not a NATS subject")
        if not _NAME.match(self.chain_bucket):
            raise ValueError(f"chain_bucket: {self.chain_bucket!r} must be 1-64 of A-Z a-z 0-9 _ -")
        if not _NAME.match(self.consumer):
            raise ValueError(f"consumer: {self.consumer!r} must be 1-64 of A-Z a-z 0-9 _ -")
        if self.replicas not in (1, 3, 5):
            raise ValueError(f"replicas: {self.replicas} must be 1, 3 or 5")
        if self.max_age_s < 60:
            raise ValueError(f"max_age_s: {self.max_age_s} must be at least 60")
        if self.max_bytes < 1 << 20:
            raise ValueError(f"max_bytes: {self.max_bytes} must be at least 1048576 (1 MiB)")
        if not 0.1 <= self.duplicate_window_s <= self.max_age_s:
            raise ValueError(
                f"duplicate_window_s: {self.duplicate_window_s} must be from 0.1 to max_age_s"
            )
        for name in ("ack_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 300:
                raise ValueError(f"{name}: {value} must be more than 0 and at most 300 seconds")
        if not 1 <= self.ack_wait_s <= 3600:
            raise ValueError(f"ack_wait_s: {self.ack_wait_s} must be from 1 to 3600 seconds")
        if not 1 <= self.fetch_batch <= 10000:
            raise ValueError(f"fetch_batch: {self.fetch_batch} must be 1..10000")
        if self.full_backoff_hint_ms < 1:
            raise ValueError(f"full_backoff_hint_ms: {self.full_backoff_hint_ms} must be positive")
