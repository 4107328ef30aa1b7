#!/usr/bin/env python3
"""Base-protocol interop check of a Diameter server, using python-diameter
(an independent implementation) to encode and decode every message.

usage: basic_peer.py [HOST [PORT]]      (defaults 127.0.0.1 3868)

Acts as the client peer pgw1.test.example / test.example over one plain TCP
connection against a server that should identify as gyro.localdomain /
localdomain, and checks in order:

  1. CER -> CEA 2001 with Origin-Host/Realm, Vendor-Id, Product-Name,
     Host-IP-Address
  2. DWR -> DWA 2001
  3. error cases on the same connection:
     a. request with command code 999 (app 0) -> answer with the E bit,
        Result-Code 3001; then a DWR still gets a DWA 2001
     b. DWR with an unknown AVP 99999 (vendor 0, M bit) -> 5001, no E bit,
        Failed-AVP holding that AVP
     c. DWR with two Origin-Host -> 5009, no E bit, Failed-AVP holding
        Origin-Host
  4. DPR -> DPA 2001, then the server closes the connection

Every read has a 5 s timeout.  Watchdog requests (DWR) the server sends us
in between are answered and otherwise ignored.  One line is printed per
check; the script exits 1 at the first failure (2 for usage / missing
python-diameter).

Environment overrides: GYRO_ORIGIN_HOST, GYRO_ORIGIN_REALM (expected server
identity).
"""
from __future__ import annotations

import os
import socket
import sys

try:
    from diameter.message import Avp, Message, MessageHeader
    from diameter.message import constants as C
    from diameter.message.avp import AvpGrouped
    from diameter.message.avp.grouped import VendorSpecificApplicationId
    from diameter.message.commands import (
        CapabilitiesExchangeRequest, DeviceWatchdogAnswer,
        DeviceWatchdogRequest, DisconnectPeerRequest)
except ImportError as e:
    print(f"FAIL setup: python-diameter is not importable ({e}); "
          f"install it with: pip install python-diameter==0.9.0")
    sys.exit(2)

CLIENT_HOST = b"pgw1.test.example"
CLIENT_REALM = b"test.example"
CLIENT_STATE_ID = 1700000000
SERVER_HOST = os.environ.get("GYRO_ORIGIN_HOST", "gyro.localdomain").encode()
SERVER_REALM = os.environ.get("GYRO_ORIGIN_REALM", "localdomain").encode()
READ_TIMEOUT = 5.0

AVP_UNKNOWN = 99999


class CheckFailed(Exception):
    pass


def fail(check: str, why: str):
    raise CheckFailed(f"{check}: {why}")


def ok(check: str, detail: str = ""):
    print(f"PASS {check}" + (f" ({detail})" if detail else ""), flush=True)


def fix_m_bits(avps: list[Avp]) -> list[Avp]:
    """RFC 6733: Origin-Host/Origin-Realm MUST have the M bit (python-diameter
    already sets it for base-protocol commands; kept for safety)."""
    for a in avps:
        if a.vendor_id == 0 and a.code in (C.AVP_ORIGIN_HOST, C.AVP_ORIGIN_REALM):
            a.is_mandatory = True
    return avps


class Peer:
    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.sock = socket.create_connection(self.addr, timeout=READ_TIMEOUT)
        self.sock.settimeout(READ_TIMEOUT)
        self.hbh = 0x1000
        self.e2e = 0x65530000

    def local_ip(self) -> str:
        return self.sock.getsockname()[0]

    def next_ids(self, msg: Message) -> Message:
        self.hbh += 1
        self.e2e += 1
        msg.header.hop_by_hop_identifier = self.hbh
        msg.header.end_to_end_identifier = self.e2e
        return msg

    def send(self, msg: Message) -> Message:
        """Encode with python-diameter and send; returns the message."""
        data = Message(msg.header, fix_m_bits(list(msg.avps))).as_bytes()
        self.sock.sendall(data)
        return msg

    def _recv_exact(self, n: int, check: str) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                fail(check, f"no data from server within {READ_TIMEOUT:.0f} s")
            except ConnectionResetError:
                fail(check, "connection reset by server")
            if not chunk:
                fail(check, "server closed the connection")
            buf += chunk
        return buf

    def recv_raw(self, check: str) -> bytes:
        hdr = self._recv_exact(20, check)
        version = hdr[0]
        length = int.from_bytes(hdr[1:4], "big")
        if version != 1:
            fail(check, f"answer has version {version}, want 1")
        if length < 20 or length % 4:
            fail(check, f"answer has bad Message Length {length}")
        return hdr + self._recv_exact(length - 20, check)

    def recv_answer(self, check: str, request: Message) -> Message:
        """Read until the answer to `request` arrives; answer server DWRs."""
        while True:
            raw = self.recv_raw(check)
            try:
                # plain_msg=True keeps the AVPs exactly as received (the typed
                # classes regenerate .avps from attributes), so find_avps()
                # sees the wire flags, order and any unknown AVPs.
                msg = Message.from_bytes(raw, plain_msg=True)
            except Exception as e:  # python-diameter could not decode it
                fail(check, f"python-diameter cannot decode the server's "
                            f"message ({e}); bytes: {raw.hex()}")
            h = msg.header
            if h.is_request:
                if h.command_code == C.CMD_DEVICE_WATCHDOG:
                    self.answer_dwr(msg)
                    continue
                fail(check, f"unexpected request from server: command "
                            f"{h.command_code}")
            if (h.hop_by_hop_identifier != request.header.hop_by_hop_identifier):
                fail(check, f"answer Hop-by-Hop 0x{h.hop_by_hop_identifier:x} "
                            f"!= request 0x{request.header.hop_by_hop_identifier:x}")
            if (h.end_to_end_identifier != request.header.end_to_end_identifier):
                fail(check, f"answer End-to-End 0x{h.end_to_end_identifier:x} "
                            f"!= request 0x{request.header.end_to_end_identifier:x}")
            if h.command_code != request.header.command_code:
                fail(check, f"answer command code {h.command_code} != "
                            f"request {request.header.command_code}")
            return msg

    def answer_dwr(self, dwr: Message):
        dwa = DeviceWatchdogAnswer()
        dwa.header.hop_by_hop_identifier = dwr.header.hop_by_hop_identifier
        dwa.header.end_to_end_identifier = dwr.header.end_to_end_identifier
        dwa.result_code = C.E_RESULT_CODE_DIAMETER_SUCCESS
        dwa.origin_host = CLIENT_HOST
        dwa.origin_realm = CLIENT_REALM
        dwa.origin_state_id = CLIENT_STATE_ID
        self.send(dwa)
        print("info: answered a DWR from the server", flush=True)


def avp_values(msg: Message, code: int, vendor: int = 0) -> list:
    return [a.value for a in msg.find_avps((code, vendor))]


def result_code(msg: Message, check: str) -> int:
    rc = avp_values(msg, C.AVP_RESULT_CODE)
    if len(rc) != 1:
        exp = msg.find_avps((C.AVP_EXPERIMENTAL_RESULT, 0),
                            (C.AVP_EXPERIMENTAL_RESULT_CODE, 0))
        extra = f", Experimental-Result-Code {[a.value for a in exp]}" if exp else ""
        fail(check, f"answer has {len(rc)} Result-Code AVPs, want 1{extra}")
    return rc[0]


def expect_rc(msg: Message, check: str, want: int, e_bit: bool):
    rc = result_code(msg, check)
    if rc != want:
        em = avp_values(msg, C.AVP_ERROR_MESSAGE)
        fail(check, f"Result-Code {rc}, want {want}"
                    + (f" (Error-Message {em[0]!r})" if em else ""))
    if msg.header.is_error != e_bit:
        fail(check, f"E bit is {'set' if msg.header.is_error else 'clear'}, "
                    f"want {'set' if e_bit else 'clear'} for Result-Code {want}")


def expect_identity(msg: Message, check: str):
    oh = avp_values(msg, C.AVP_ORIGIN_HOST)
    orr = avp_values(msg, C.AVP_ORIGIN_REALM)
    if oh != [SERVER_HOST]:
        fail(check, f"Origin-Host {oh}, want [{SERVER_HOST!r}]")
    if orr != [SERVER_REALM]:
        fail(check, f"Origin-Realm {orr}, want [{SERVER_REALM!r}]")


def failed_avp_contains(msg: Message, code: int, vendor: int = 0) -> list[Avp]:
    return msg.find_avps((C.AVP_FAILED_AVP, 0), (code, vendor))


def make_dwr(peer: Peer) -> DeviceWatchdogRequest:
    m = DeviceWatchdogRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.origin_state_id = CLIENT_STATE_ID
    return peer.next_ids(m)


def step_cer(peer: Peer):
    check = "CER -> CEA 2001"
    m = CapabilitiesExchangeRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.host_ip_address = [peer.local_ip()]
    m.vendor_id = 10415
    m.product_name = "gyro-interop-basic-peer"
    m.origin_state_id = CLIENT_STATE_ID
    m.supported_vendor_id = [10415]
    m.auth_application_id = [C.APP_DIAMETER_CREDIT_CONTROL_APPLICATION]
    m.vendor_specific_application_id = [VendorSpecificApplicationId(
        vendor_id=10415,
        auth_application_id=C.APP_DIAMETER_CREDIT_CONTROL_APPLICATION)]
    m.firmware_revision = 1
    peer.send(peer.next_ids(m))
    cea = peer.recv_answer(check, m)
    expect_rc(cea, check, 2001, e_bit=False)
    expect_identity(cea, check)
    for name, code in (("Vendor-Id", C.AVP_VENDOR_ID),
                       ("Product-Name", C.AVP_PRODUCT_NAME),
                       ("Host-IP-Address", C.AVP_HOST_IP_ADDRESS)):
        if not avp_values(cea, code):
            fail(check, f"CEA has no {name}")
    if len(avp_values(cea, C.AVP_VENDOR_ID)) != 1:
        fail(check, "CEA has more than one top-level Vendor-Id")
    if len(avp_values(cea, C.AVP_PRODUCT_NAME)) != 1:
        fail(check, "CEA has more than one Product-Name")
    if cea.header.is_proxyable:
        fail(check, "CEA has the P bit set (CER/CEA are not proxiable)")
    ips = [v[1] for v in avp_values(cea, C.AVP_HOST_IP_ADDRESS)]
    apps = avp_values(cea, C.AVP_AUTH_APPLICATION_ID) + [
        a.value for a in cea.find_avps((C.AVP_VENDOR_SPECIFIC_APPLICATION_ID, 0),
                                       (C.AVP_AUTH_APPLICATION_ID, 0))]
    ok(check, f"Origin-Host {SERVER_HOST.decode()}, Host-IP-Address {ips}, "
              f"Vendor-Id {avp_values(cea, C.AVP_VENDOR_ID)[0]}, "
              f"Product-Name {avp_values(cea, C.AVP_PRODUCT_NAME)[0]!r}, "
              f"Auth-Application-Ids {apps}")


def step_dwr(peer: Peer, check: str = "DWR -> DWA 2001"):
    m = make_dwr(peer)
    peer.send(m)
    dwa = peer.recv_answer(check, m)
    expect_rc(dwa, check, 2001, e_bit=False)
    expect_identity(dwa, check)
    ok(check)


def step_unknown_command(peer: Peer):
    check = "command 999 -> 3001 with E bit"
    hdr = MessageHeader(version=1, command_flags=0x80, command_code=999,
                        application_id=0)
    m = Message(hdr, [
        Avp.new(C.AVP_ORIGIN_HOST, value=CLIENT_HOST),
        Avp.new(C.AVP_ORIGIN_REALM, value=CLIENT_REALM),
        Avp.new(C.AVP_ORIGIN_STATE_ID, value=CLIENT_STATE_ID)])
    peer.next_ids(m)
    peer.send(m)
    ans = peer.recv_answer(check, m)
    expect_rc(ans, check, 3001, e_bit=True)
    ok(check)
    step_dwr(peer, "connection usable after 3001: DWR -> DWA 2001")


def step_unknown_mbit_avp(peer: Peer):
    check = "DWR + unknown M-bit AVP 99999 -> 5001 with Failed-AVP"
    m = make_dwr(peer)
    m.append_avp(Avp(AVP_UNKNOWN, 0, b"\x00\x00\x00\x01",
                     flags=Avp.avp_flag_mandatory))
    peer.send(m)
    ans = peer.recv_answer(check, m)
    expect_rc(ans, check, 5001, e_bit=False)
    inner = failed_avp_contains(ans, AVP_UNKNOWN)
    if not inner:
        got = [[f"{a.code}/{a.vendor_id}" for a in (fa.value if isinstance(fa, AvpGrouped) else [])]
               for fa in ans.find_avps((C.AVP_FAILED_AVP, 0))]
        fail(check, f"Failed-AVP does not contain AVP {AVP_UNKNOWN}; "
                    f"Failed-AVP contents: {got or 'no Failed-AVP'}")
    ok(check, f"Failed-AVP holds AVP {AVP_UNKNOWN}, payload {inner[0].payload.hex()}")


def step_too_many(peer: Peer):
    check = "DWR with two Origin-Host -> 5009"
    m = make_dwr(peer)
    m.append_avp(Avp.new(C.AVP_ORIGIN_HOST, value=CLIENT_HOST))
    peer.send(m)
    ans = peer.recv_answer(check, m)
    expect_rc(ans, check, 5009, e_bit=False)
    if not failed_avp_contains(ans, C.AVP_ORIGIN_HOST):
        fail(check, "Failed-AVP with a copy of Origin-Host missing "
                    "(RFC 6733 7.1.5: MUST be included)")
    ok(check, "Failed-AVP holds Origin-Host")


def step_dpr(peer: Peer):
    check = "DPR -> DPA 2001"
    m = DisconnectPeerRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.disconnect_cause = C.E_DISCONNECT_CAUSE_REBOOTING
    peer.send(peer.next_ids(m))
    dpa = peer.recv_answer(check, m)
    expect_rc(dpa, check, 2001, e_bit=False)
    expect_identity(dpa, check)
    ok(check)

    check = "server closes the connection after DPA"
    try:
        data = peer.sock.recv(4096)
    except socket.timeout:
        fail(check, f"connection still open {READ_TIMEOUT:.0f} s after DPA")
    except ConnectionResetError:
        data = b""
    if data:
        fail(check, f"got {len(data)} more bytes instead of EOF")
    ok(check)


def main(argv: list[str]) -> int:
    if len(argv) > 3 or (len(argv) > 1 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 2
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    port = int(argv[2]) if len(argv) > 2 else 3868
    try:
        peer = Peer(host, port)
    except OSError as e:
        print(f"FAIL connect {host}:{port}: {e}")
        return 1
    ok("connect", f"{host}:{port}")
    try:
        step_cer(peer)
        step_dwr(peer)
        step_unknown_command(peer)
        step_unknown_mbit_avp(peer)
        step_too_many(peer)
        step_dwr(peer, "connection usable after 5001/5009: DWR -> DWA 2001")
        step_dpr(peer)
    except CheckFailed as e:
        print(f"FAIL {e}", flush=True)
        return 1
    finally:
        peer.sock.close()
    print("basic_peer: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
