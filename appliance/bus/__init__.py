"""The EventBus: the central gRPC service that authenticates, verifies, deduplicates and stores.

Request path, in order (each step owns one module):

    mTLS handshake (server.py: client certificate from the org CA required)
      -> CN in the trust map? (auth.py)            no: PERMISSION_DENIED, nothing read
      -> admission control (admission.py)          soft: RETRY + hint; hard: RESOURCE_EXHAUSTED
      -> per-envelope checks (verify.py)           version, key, size, time, CN, Ed25519 signature
      -> store (store.py)                          one SQLite transaction per group of requests;
                                                   dedupe by (agent, idempotency key)
      -> acks                                      OK only after the commit: at-least-once upstream

Metrics (metrics.py) and the HTTP health endpoints (health.py) observe every step.
"""
