"""The bus on NATS JetStream (docs/SCALE.md): stateless bus replicas publish verified envelopes
to a replicated stream (sink.py); a durable consumer writes them into the SQLite store
(consumer.py); per-agent chain state is shared through a key-value bucket (chainkv.py)."""
