"""A TCP IPFIX collector process for tests, built on python-ipfix (Brian Trammell's independent
RFC 7011 implementation), not on our encoder.

    python ipfix_collector.py PORT OUT.jsonl

Listens on 127.0.0.1:PORT, takes one connection at a time and writes one JSON line per data
record (flow records and options records alike) with the message's observation domain and
sequence number, flushed per message. A sequence number that is not the previous message's
plus its data records is written as a {"sequence_error": ...} line. On SIGTERM it closes its
end the way RFC 7011 10.4.1 asks (shutdown for writing, then read until the exporter closes),
writes what it read, and exits 0. SIGKILL is the unclean stop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import signal
import socket
import sys
from typing import Any

import ipfix.ie
import ipfix.message

ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return int(value.replace(tzinfo=dt.UTC).timestamp() * 1000)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def main() -> int:
    port, out_path = int(sys.argv[1]), sys.argv[2]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)
    state: dict[str, Any] = {"conn": None, "stopping": False}

    def on_term(signum: int, frame: object) -> None:
        state["stopping"] = True
        listener.close()  # first stop accepting: a reconnect must not land in a dying backlog
        conn = state["conn"]
        if conn is not None:
            with contextlib.suppress(OSError):  # RFC 7011 10.4.1: then read until EOF
                conn.shutdown(socket.SHUT_WR)
        else:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("listening", flush=True)
    with open(out_path, "a") as out:
        while not state["stopping"]:
            conn, _ = listener.accept()
            state["conn"] = conn
            stream = conn.makefile("rb")
            msg = ipfix.message.MessageBuffer()
            expected: dict[int, int] = {}
            try:
                while True:
                    try:
                        msg.read_message(stream)
                    except (EOFError, ipfix.message.IpfixDecodeError, ConnectionError):
                        break
                    lines = []
                    for rec in msg.namedict_iterator():
                        rec = {k: _plain(v) for k, v in rec.items()}
                        lines.append({"odid": msg.odid, "msg_seq": msg.sequence, **rec})
                    want = expected.get(msg.odid, msg.sequence)
                    if msg.sequence != want:
                        lines.append({"sequence_error": [msg.odid, want, msg.sequence]})
                    expected[msg.odid] = (msg.sequence + sum(1 for r in lines if "odid" in r)) % (
                        1 << 32
                    )
                    out.write("".join(json.dumps(line) + "\n" for line in lines))
                    out.flush()
            finally:
                state["conn"] = None
                conn.close()
            out.write(json.dumps({"session_end": True}) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
