#!/usr/bin/env python3
"""A real SMTP server for gyro's SMTP tests: aiosmtpd (PyPI), an independent implementation.

It requires STARTTLS (RFC 3207) and AUTH (RFC 4954) over TLS, accepts every message after that,
parses each with Python's own `email` package (a MIME parser that is not lettre's) and writes
what it saw to OUT_DIR as <n>.json: the envelope, whether the session was encrypted and who
authenticated, the headers that matter, and every leaf part with its decoded bytes in
<n>.part<k> beside it. A recipient at `refuse.example` is refused with 550 and one at
`later.example` with 451, so the client's permanent/transient split can be checked.

Usage: smtp_sink.py --cert CERT --key KEY --user U --password P --out OUT_DIR
Prints `READY <port>` once it listens on 127.0.0.1, and runs until stdin closes.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out):
        self.out = out
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rsplit("@", 1)[-1].lower()
        if domain == "refuse.example":
            return "550 5.1.1 mailbox unavailable"
        if domain == "later.example":
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        n = self.count
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = []
        for k, part in enumerate(p for p in msg.walk() if not p.is_multipart()):
            data = part.get_payload(decode=True) or b""
            name = f"{n}.part{k}"
            with open(os.path.join(self.out, name), "wb") as f:
                f.write(data)
            parts.append(
                {
                    "content_type": part.get_content_type(),
                    "filename": part.get_filename(),
                    "disposition": part.get_content_disposition(),
                    "file": name,
                }
            )
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "auth": session.authenticated,
            "login": (session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None),
            "message_id": msg.get("Message-ID"),
            "subject": msg.get("Subject"),
            "to": msg.get("To"),
            "from": msg.get("From"),
            "defects": [str(d) for d in msg.defects],
            "parts": parts,
        }
        tmp = os.path.join(self.out, f".{n}.json")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out, f"{n}.json"))
        return "250 2.0.0 queued as sink-%d" % n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False: aiosmtpd sends the 535 itself (handled=True would send nothing).
        return AuthResult(success=False, handled=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(
        Sink(args.out),
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    print(f"READY {port}", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
