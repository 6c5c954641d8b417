"""Serial-console provisioning: a fresh box gets its identity without network and without
anyone typing keys.

- frames.py: the line framing (the format's invariants are listed there);
- device.py: the responder that runs on the box's console instead of a shell, and its states;
- host.py: the technician's side, which signs the box's CSR with the org CA;
- link.py: the byte pipes both run over (pyserial on the host, the console's descriptors on
  the box).
"""
