"""The organisation's PKI: a CA, the bus server certificate, agent client certificates.

Directory layout written by `infraspectre pki init DIR` and `pki issue-agent DIR ID`:

    DIR/ca.crt, DIR/ca.key                 org CA (ECDSA P-256, 10 years), key 0600
    DIR/server.crt, DIR/server.key         bus server certificate: serverAuth, SANs given
    DIR/trust_map.yaml                     agents: {ID: agents/ID/ed25519.pub}
    DIR/agents/ID/client.crt, client.key   agent client certificate: CN=ID, clientAuth
    DIR/agents/ID/ed25519.key, .pub        the agent's envelope-signing key pair

TLS keys are ECDSA P-256 (cheap handshakes on a Pi, universally supported by gRPC's TLS stack);
envelope signatures are Ed25519 (crypto/), independent of the TLS identity.
"""

from appliance.pki.ca import (
    AgentIdentity,
    PkiError,
    init_pki,
    issue_agent,
    load_ca,
    sign_csr,
    validate_agent_id,
)
from appliance.pki.trustmap import TrustMap, add_trust_entry, load_trust_map

__all__ = [
    "AgentIdentity",
    "PkiError",
    "TrustMap",
    "add_trust_entry",
    "init_pki",
    "issue_agent",
    "load_ca",
    "load_trust_map",
    "sign_csr",
    "validate_agent_id",
]
