"""`infraspectre pki ...`: the org CA, the bus certificate and agent identities."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.errors import CommandError
from appliance.pki import updatekey


def register(sub: Any) -> None:
    """Add the `pki` command tree."""
    pki = sub.add_parser("pki", help="org CA, bus server certificate, agent identities")
    pki_sub = pki.add_subparsers(dest="pki_command", metavar="ACTION")
    pki_sub.required = True

    init = pki_sub.add_parser("init", help="create the org CA and the bus server certificate")
    init.add_argument("dir", type=Path, help="PKI directory to create")
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the bus certificate (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)

    issue = pki_sub.add_parser(
        "issue-agent", help="create an agent identity (host-side demos, tests)"
    )
    issue.add_argument("dir", type=Path)
    issue.add_argument("agent_id")
    issue.add_argument("--force", action="store_true", help="replace an existing identity")
    issue.set_defaults(func=_issue)

    csr = pki_sub.add_parser("sign-csr", help="sign a device's CSR as its client certificate")
    csr.add_argument("dir", type=Path)
    csr.add_argument("csr", type=Path, help="PEM CSR file ('-' for standard input)")
    csr.add_argument("--agent-id", required=True)
    csr.add_argument(
        "--out", type=Path, help="write the certificate here (default: standard output)"
    )
    csr.add_argument(
        "--signing-pub",
        help="device Ed25519 public key (file or inline hex/base64) to add to the trust map",
    )
    csr.set_defaults(func=_sign_csr)
    updatekey.register(pki_sub)  # `pki init-update-key` (appliance/pki/updatekey.py)

    revoke = pki_sub.add_parser(
        "revoke",
        help="remove an agent from the trust map and revoke its certificates (bus: kill -HUP)",
    )
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("agent_id")
    revoke.add_argument(
        "--trust-map",
        type=Path,
        help="the trust map to edit (default DIR/trust_map.yaml); revoked.yaml is written "
        "next to it",
    )
    revoke.add_argument(
        "--cert",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also revoke this certificate (one the CA has no record of; repeatable)",
    )
    revoke.set_defaults(func=_revoke)


def _init(args: argparse.Namespace) -> int:
    from appliance.pki import init_pki

    init_pki(args.dir, args.san, force=args.force)
    print(f"created CA and bus certificate in {args.dir}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from appliance.pki import issue_agent

    ident = issue_agent(args.dir, args.agent_id, force=args.force)
    print(f"issued agent {ident.agent_id}: {ident.client_cert.parent}")
    return 0


def _sign_csr(args: argparse.Namespace) -> int:
    from appliance.crypto import load_verify_key, parse_verify_key
    from appliance.crypto.keys import require_prime_order
    from appliance.pki import add_trust_entry, sign_csr

    try:
        data = sys.stdin.buffer.read() if str(args.csr) == "-" else args.csr.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read CSR {args.csr}: {exc.strerror}") from exc
    key = None
    if args.signing_pub:  # checked before anything is signed: a refused key issues nothing
        candidate = Path(args.signing_pub)
        key = require_prime_order(
            load_verify_key(candidate)
            if candidate.exists()
            else parse_verify_key(args.signing_pub, "--signing-pub"),
            "--signing-pub",
        )
    cert = sign_csr(args.dir, data, args.agent_id)
    if key is not None:
        add_trust_entry(args.dir / "trust_map.yaml", args.agent_id, bytes(key).hex())
    if args.out:
        args.out.write_bytes(cert)
    else:
        sys.stdout.buffer.write(cert)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from appliance.pki.revocation import revoke_agent

    done = revoke_agent(args.dir, args.agent_id, trust_map=args.trust_map, extra_certs=args.cert)
    serials = ", ".join(f"{s:x}" for s in done.serials) or "none on record"
    where = "removed from the trust map" if done.left_trust_map else "not in the trust map"
    print(f"revoked {done.agent_id}: {where}; certificates revoked: {serials}")
    print("send SIGHUP to the bus (or restart it) for this to take effect")
    return 0
