#!/usr/bin/env python3
"""Credit-control interop check of gyro, using python-diameter (an
independent implementation) to encode and decode every message.

usage: cc_session.py [HOST [PORT]]      (defaults 127.0.0.1 3868)

Expects gyro's embedded demo catalog (`gyro serve` without --config).  Acts
as the client peer ccpeer.test.example / test.example over one plain TCP
connection and checks, in order:

  0. CER -> CEA 2001; CHECK_BALANCE event for Bob (e164:491700000002) ->
     2001, Check-Balance-Result 0 ENOUGH_CREDIT, Remaining-Balance R0
  a. Gy data session for Bob with rating groups 10 and 20 in every request:
     CCR-I (empty RSU per MSCC) -> 2001, each MSCC 2001 with
     GSU CC-Total-Octets 10485760 and 0 < Validity-Time <= 3600;
     CCR-U #1 (USU rg10 1 MiB, rg20 2 MiB, RSU each) and CCR-U #2 (USU rg10
     1 MiB, RSU each) -> 2001, each MSCC 2001 with a GSU (a CHECK_BALANCE
     in between must show the open grants reserved: R0 - 0.25 <=
     Remaining-Balance < R0);
     CCR-T (USU rg10 512 KiB, rg20 300000 octets, Reporting-Reason FINAL)
     -> 2001, Cost-Information > 0 EUR (and not above the undiscounted
     weekday list price of the reported usage), Remaining-Balance,
     Low-Balance-Indication;
     a second session on rating group 30 reporting 3 x 100 KiB -> CCA-T
     Cost-Information exactly 0.01 EUR (cumulative usage rounded up to the
     cent once; true on any day and with any discount)
  c. Remaining-Balance(CCA-T) == R0 - Cost-Information(CCA-T), exactly;
     likewise the rg30 session lowers it by exactly its cost
  s. Bob is on_file with the sandbox's succeeding card: after each session and
     the SMS, gyro's settlement worker invoices and charges it and restores
     the credit line, so CHECK_BALANCE comes back to exactly R0 (polled up to
     10 s; never beyond: the duplicate CCR-E is not settled twice)
  b. SMS CCR-E DIRECT_DEBITING (32274@3gpp.org, RSU 1 service-specific
     unit) -> 2001, Cost-Information 0.09 EUR, Remaining-Balance dropped by
     exactly 0.09; the same CCR-E again (same Session-Id and
     CC-Request-Number, same End-to-End id, T flag) -> the same answer,
     Remaining-Balance unchanged; PRICE_ENQUIRY -> 2001, cost 0.09,
     Remaining-Balance unchanged; CHECK_BALANCE -> still unchanged
  d. CCR-I Carol -> 4012; Dave -> 4010; e164:491799999999 -> 5030; CCR-U
     for a session never opened -> 5002; Erin CCR-I data -> 2001 with a
     grant 0 < GSU < 10 MiB and Final-Unit-Indication REDIRECT to
     http://topup.example.org/ (Redirect-Address-Type URL); Erin CCR-T with
     no usage -> 2001, Cost-Information 0
  e. DPR -> DPA 2001, then the server closes the connection

Every answer must echo Session-Id, CC-Request-Type/Number, carry
Auth-Application-Id 4, the server identity and a clear E bit.  Money values
are compared exactly (Value-Digits x 10^Exponent as fractions).  Data prices
are not hard-coded (the demo catalog has a weekend band).

Every read has a 5 s timeout; watchdog requests from the server are
answered.  One PASS/FAIL line per check; on a failure the answer is dumped.
Exits 1 at the first failure, 2 for usage / missing python-diameter.  On
success the last line is `REMAINING <Value-Digits> <Exponent>`: Bob's last
Remaining-Balance (also written to the file named by $CC_REMAINING_FILE).

Session-Ids contain the time and the pid, so the script can be rerun
against the same server (it reads Bob's balance first, and assumes nothing
else charges Bob while it runs).

Environment overrides: GYRO_ORIGIN_HOST, GYRO_ORIGIN_REALM (expected server
identity), CC_REMAINING_FILE, CC_VERBOSE=1 (dump every answer).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from fractions import Fraction

try:
    from diameter.message import Avp, Message
    from diameter.message import constants as C
    from diameter.message.avp import AvpGrouped
    from diameter.message.avp.grouped import (
        MultipleServicesCreditControl, RequestedServiceUnit, UsedServiceUnit,
        VendorSpecificApplicationId)
    from diameter.message.commands import (
        CapabilitiesExchangeRequest, CreditControlRequest,
        DeviceWatchdogAnswer, DisconnectPeerRequest)
except ImportError as e:
    print(f"FAIL setup: python-diameter is not importable ({e}); "
          f"install it with: pip install python-diameter==0.9.0")
    sys.exit(2)

CLIENT_HOST = b"ccpeer.test.example"
CLIENT_REALM = b"test.example"
CLIENT_STATE_ID = 1700000002
SERVER_HOST = os.environ.get("GYRO_ORIGIN_HOST", "gyro.localdomain").encode()
SERVER_REALM = os.environ.get("GYRO_ORIGIN_REALM", "localdomain").encode()
READ_TIMEOUT = 5.0
VERBOSE = bool(os.environ.get("CC_VERBOSE"))

APP_CC = 4
V3GPP = 10415
EUR = 978
CTX_DATA = "32251@3gpp.org"
CTX_SMS = "32274@3gpp.org"
BOB = "491700000002"
CAROL = "491700000003"
DAVE = "491700000004"
ERIN = "491700000005"
NOBODY = "491799999999"
MIB = 1048576
QUOTA = 10 * MIB                      # demo catalog: 10 MiB per grant
MAX_VALIDITY = 3600
SMS_PRICE = Fraction(9, 100)          # Bob: 0.081 -> 0.09 (rounded up)
DATA_LIST_PRICE = Fraction(1, 100)    # EUR per MiB, weekday, undiscounted
TOPUP_URL = "http://topup.example.org/"

# AVP codes (vendor 0 unless noted) - RFC 4006 / TS 32.299
A_MSCC = C.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL      # 456
A_GSU = C.AVP_GRANTED_SERVICE_UNIT                   # 431
A_TOTAL = C.AVP_CC_TOTAL_OCTETS                      # 421
A_RG = C.AVP_RATING_GROUP                            # 432
A_VT = C.AVP_VALIDITY_TIME                           # 448
A_FUI = C.AVP_FINAL_UNIT_INDICATION                  # 430
A_FUA = C.AVP_FINAL_UNIT_ACTION                      # 449
A_RS = C.AVP_REDIRECT_SERVER                         # 434
A_RAT = C.AVP_REDIRECT_ADDRESS_TYPE                  # 433
A_RSA = C.AVP_REDIRECT_SERVER_ADDRESS                # 435
A_COST = C.AVP_COST_INFORMATION                      # 423
A_UV = C.AVP_UNIT_VALUE                              # 445
A_DIGITS = C.AVP_VALUE_DIGITS                        # 447
A_EXP = C.AVP_EXPONENT                               # 429
A_CUR = C.AVP_CURRENCY_CODE                          # 425
A_CBR = C.AVP_CHECK_BALANCE_RESULT                   # 422
A_RBAL = C.AVP_TGPP_REMAINING_BALANCE                # 2021 / 10415
A_LBI = C.AVP_TGPP_LOW_BALANCE_INDICATION            # 2020 / 10415

# RFC 6733: these MUST carry the M bit; python-diameter 0.9.0's CCR class
# emits Origin-Host/Realm and Destination-Host without it (see
# tests/vectors/gen.py fix_flags).
MUST_M = {(C.AVP_ORIGIN_HOST, 0), (C.AVP_ORIGIN_REALM, 0),
          (C.AVP_DESTINATION_HOST, 0), (C.AVP_DESTINATION_REALM, 0)}


class CheckFailed(Exception):
    pass


def dump(msg: Message | None) -> str:
    """Indented AVP tree of a decoded message (plain_msg), for failures."""
    if msg is None:
        return ""
    h = msg.header
    flags = "".join(f if on else "-" for f, on in (
        ("R", h.is_request), ("P", h.is_proxyable), ("E", h.is_error),
        ("T", h.is_retransmit)))
    lines = [f"  code={h.command_code} app={h.application_id} flags={flags} "
             f"hbh=0x{h.hop_by_hop_identifier:x} e2e=0x{h.end_to_end_identifier:x}"]

    def walk(avps, depth):
        for a in avps:
            fl = ("V" if a.is_vendor else "-") + ("M" if a.is_mandatory else "-")
            vnd = f" v={a.vendor_id}" if a.vendor_id else ""
            head = f"  {'  ' * depth}{a.name}({a.code}{vnd}) {fl}"
            if isinstance(a, AvpGrouped):
                lines.append(head)
                walk(a.value, depth + 1)
            else:
                try:
                    v = a.value
                except Exception:
                    v = f"<undecodable {a.payload.hex()}>"
                lines.append(f"{head} = {v!r}")
    walk(msg.avps, 1)
    return "\n".join(lines)


def fail(check: str, why: str, msg: Message | None = None):
    text = f"{check}: {why}"
    if msg is not None:
        text += "\n  answer:\n" + dump(msg)
    raise CheckFailed(text)


def ok(check: str, detail: str = ""):
    print(f"PASS {check}" + (f" ({detail})" if detail else ""), flush=True)


def fix_flags(avps: list[Avp]) -> list[Avp]:
    for a in avps:
        if (a.code, a.vendor_id) in MUST_M:
            a.is_mandatory = True
    return avps


def eur(x: Fraction) -> str:
    """Exact decimal rendering of a Fraction with a power-of-ten-ish
    denominator (falls back to the fraction)."""
    for places in range(2, 13):
        scaled = x * 10 ** places
        if scaled.denominator == 1:
            n = scaled.numerator
            sign = "-" if n < 0 else ""
            s = str(abs(n)).rjust(places + 1, "0")
            return sign + s[:-places] + "." + s[-places:]
    return str(x)


# ---------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------
class Peer:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=READ_TIMEOUT)
        self.sock.settimeout(READ_TIMEOUT)
        self.hbh = 0x2000
        self.e2e = 0x66000000 | (os.getpid() & 0xffff) << 8

    def local_ip(self) -> str:
        return self.sock.getsockname()[0]

    def next_ids(self, msg: Message) -> Message:
        self.hbh += 1
        self.e2e += 1
        msg.header.hop_by_hop_identifier = self.hbh
        msg.header.end_to_end_identifier = self.e2e
        return msg

    def send(self, msg: Message) -> Message:
        self.sock.sendall(Message(msg.header, fix_flags(list(msg.avps))).as_bytes())
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
        length = int.from_bytes(hdr[1:4], "big")
        if hdr[0] != 1:
            fail(check, f"answer has version {hdr[0]}, want 1")
        if length < 20 or length % 4:
            fail(check, f"answer has bad Message Length {length}")
        return hdr + self._recv_exact(length - 20, check)

    def recv_answer(self, check: str, request: Message) -> Message:
        while True:
            raw = self.recv_raw(check)
            try:
                msg = Message.from_bytes(raw, plain_msg=True)
                _touch_all(msg.avps)
            except Exception as e:
                fail(check, f"python-diameter cannot decode the server's "
                            f"message ({e}); bytes: {raw.hex()}")
            h = msg.header
            if h.is_request:
                if h.command_code == C.CMD_DEVICE_WATCHDOG:
                    self.answer_dwr(msg)
                    continue
                fail(check, f"unexpected request from server: command "
                            f"{h.command_code}", msg)
            rq = request.header
            if h.hop_by_hop_identifier != rq.hop_by_hop_identifier:
                fail(check, f"answer Hop-by-Hop 0x{h.hop_by_hop_identifier:x} "
                            f"!= request 0x{rq.hop_by_hop_identifier:x}", msg)
            if h.end_to_end_identifier != rq.end_to_end_identifier:
                fail(check, f"answer End-to-End 0x{h.end_to_end_identifier:x} "
                            f"!= request 0x{rq.end_to_end_identifier:x}", msg)
            if h.command_code != rq.command_code:
                fail(check, f"answer command code {h.command_code} != "
                            f"request {rq.command_code}", msg)
            if h.application_id != rq.application_id:
                fail(check, f"answer Application-Id {h.application_id} != "
                            f"request {rq.application_id}", msg)
            return msg

    def exchange(self, check: str, request: Message) -> Message:
        self.send(request)
        ans = self.recv_answer(check, request)
        if VERBOSE:
            print(f"info: answer for [{check}]:\n{dump(ans)}", flush=True)
        return ans

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


def _touch_all(avps):
    """Decode every AVP value now, so a malformed AVP fails at decode time."""
    for a in avps:
        v = a.value
        if isinstance(a, AvpGrouped):
            _touch_all(v)


# ---------------------------------------------------------------------------
# AVP access on plain_msg answers
# ---------------------------------------------------------------------------
def kids(avp: Avp, code: int, vendor: int = 0) -> list[Avp]:
    if not isinstance(avp, AvpGrouped):
        return []
    return [a for a in avp.value if a.code == code and a.vendor_id == vendor]


def top(msg: Message, code: int, vendor: int = 0) -> list[Avp]:
    return [a for a in msg.avps if a.code == code and a.vendor_id == vendor]


def one(avps: list[Avp], what: str, check: str, msg: Message) -> Avp:
    if len(avps) != 1:
        fail(check, f"{len(avps)} {what} AVP(s), want exactly 1", msg)
    return avps[0]


def money(group: Avp, what: str, check: str, msg: Message) -> tuple[Fraction, int, int]:
    """(value, Value-Digits, Exponent) of a Cost-Information or
    Remaining-Balance group; requires Currency-Code 978 (EUR)."""
    uv = one(kids(group, A_UV), f"{what}/Unit-Value", check, msg)
    digits = one(kids(uv, A_DIGITS), f"{what}/Unit-Value/Value-Digits", check, msg).value
    exps = kids(uv, A_EXP)
    if len(exps) > 1:
        fail(check, f"{what}/Unit-Value has {len(exps)} Exponent AVPs", msg)
    exp = exps[0].value if exps else 0          # RFC 4006 8.8: default 0
    cur = one(kids(group, A_CUR), f"{what}/Currency-Code", check, msg).value
    if cur != EUR:
        fail(check, f"{what} Currency-Code {cur}, want {EUR} (EUR)", msg)
    return Fraction(digits) * Fraction(10) ** exp, digits, exp


def cost_of(msg: Message, check: str) -> Fraction:
    return money(one(top(msg, A_COST), "Cost-Information", check, msg),
                 "Cost-Information", check, msg)[0]


def balance_of(msg: Message, check: str) -> tuple[Fraction, int, int]:
    rb = one(top(msg, A_RBAL, V3GPP), "Remaining-Balance (2021/10415)", check, msg)
    val = money(rb, "Remaining-Balance", check, msg)
    lbi = one(top(msg, A_LBI, V3GPP), "Low-Balance-Indication (2020/10415)", check, msg)
    if lbi.value not in (0, 1):
        fail(check, f"Low-Balance-Indication {lbi.value}, want 0 or 1", msg)
    return val


def mscc_map(msg: Message, check: str) -> dict[int, Avp]:
    out = {}
    for m in top(msg, A_MSCC):
        rgs = kids(m, A_RG)
        rg = rgs[0].value if len(rgs) == 1 else None
        if rg in out:
            fail(check, f"two MSCCs for Rating-Group {rg}", msg)
        out[rg] = m
    return out


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------
RUN_TAG = f"{int(time.time())}.{os.getpid()}"
_session_counter = 0


def new_session_id(label: str) -> str:
    global _session_counter
    _session_counter += 1
    return f"{CLIENT_HOST.decode()};{RUN_TAG};{_session_counter};{label}"


def ccr(peer: Peer, session_id: str, context: str, req_type: int, number: int,
        msisdn: str, msccs: list[MultipleServicesCreditControl] | None = None,
        rsu: RequestedServiceUnit | None = None, action: int | None = None,
        termination_cause: int | None = None) -> CreditControlRequest:
    m = CreditControlRequest()
    m.header.application_id = APP_CC      # python-diameter leaves it 0
    m.session_id = session_id
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.destination_realm = SERVER_REALM
    m.auth_application_id = APP_CC
    m.service_context_id = context
    m.cc_request_type = req_type
    m.cc_request_number = number
    m.origin_state_id = CLIENT_STATE_ID
    m.add_subscription_id(C.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, msisdn)
    if termination_cause is not None:
        m.termination_cause = termination_cause
    if action is not None:
        m.requested_action = action
    if rsu is not None:
        m.requested_service_unit = rsu
    if msccs:
        m.multiple_services_indicator = \
            C.E_MULTIPLE_SERVICES_INDICATOR_MULTIPLE_SERVICES_SUPPORTED
        m.multiple_services_credit_control = msccs
    return peer.next_ids(m)


def mscc(rg: int, rsu: bool = True, used: int | None = None,
         final: bool = False) -> MultipleServicesCreditControl:
    x = MultipleServicesCreditControl(rating_group=rg)
    if rsu:
        x.requested_service_unit = RequestedServiceUnit()
    if used is not None:
        u = UsedServiceUnit()
        u.cc_total_octets = used
        u.cc_input_octets = used // 4
        u.cc_output_octets = used - used // 4
        if final:
            u.reporting_reason = C.E_3GPP_REPORTING_REASON_FINAL
        x.used_service_unit = [u]
    return x


def expect_cca(ans: Message, check: str, req: CreditControlRequest, want_rc: int):
    rc = [a.value for a in top(ans, C.AVP_RESULT_CODE)]
    if rc != [want_rc]:
        exp = ans.find_avps((C.AVP_EXPERIMENTAL_RESULT, 0),
                            (C.AVP_EXPERIMENTAL_RESULT_CODE, 0))
        fail(check, f"Result-Code {rc}, want [{want_rc}]"
                    + (f" (Experimental-Result-Code {[a.value for a in exp]})"
                       if exp else ""), ans)
    if ans.header.is_error:
        fail(check, f"E bit set on a {want_rc} answer (only 3xxx protocol "
                    f"errors carry it)", ans)
    if not ans.header.is_proxyable:
        fail(check, "CCA without the P bit (RFC 6733 6.2: copied from the "
                    "request)", ans)
    sid = [a.value for a in top(ans, C.AVP_SESSION_ID)]
    if sid != [req.session_id]:
        fail(check, f"Session-Id {sid}, want [{req.session_id!r}]", ans)
    if not ans.avps or ans.avps[0].code != C.AVP_SESSION_ID:
        fail(check, "Session-Id is not the first AVP", ans)
    for what, code, want in (
            ("Origin-Host", C.AVP_ORIGIN_HOST, SERVER_HOST),
            ("Origin-Realm", C.AVP_ORIGIN_REALM, SERVER_REALM),
            ("Auth-Application-Id", C.AVP_AUTH_APPLICATION_ID, APP_CC),
            ("CC-Request-Type", C.AVP_CC_REQUEST_TYPE, req.cc_request_type),
            ("CC-Request-Number", C.AVP_CC_REQUEST_NUMBER, req.cc_request_number)):
        got = [a.value for a in top(ans, code)]
        if got != [want]:
            fail(check, f"{what} {got}, want [{want!r}]", ans)


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
def step_cer(peer: Peer):
    check = "CER -> CEA 2001"
    m = CapabilitiesExchangeRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.host_ip_address = [peer.local_ip()]
    m.vendor_id = V3GPP
    m.product_name = "gyro-interop-cc-session"
    m.origin_state_id = CLIENT_STATE_ID
    m.supported_vendor_id = [V3GPP]
    m.auth_application_id = [APP_CC]
    m.vendor_specific_application_id = [VendorSpecificApplicationId(
        vendor_id=V3GPP, auth_application_id=APP_CC)]
    m.firmware_revision = 1
    cea = peer.exchange(check, peer.next_ids(m))
    rc = [a.value for a in top(cea, C.AVP_RESULT_CODE)]
    if rc != [2001]:
        fail(check, f"Result-Code {rc}, want [2001]", cea)
    ok(check)


def event(peer: Peer, check: str, msisdn: str, action: int,
          session_id: str | None = None, number: int = 0,
          ) -> tuple[CreditControlRequest, Message]:
    sid = session_id or new_session_id({0: "debit", 1: "refund", 2: "check",
                                        3: "price"}[action])
    req = ccr(peer, sid, CTX_SMS, C.E_CC_REQUEST_TYPE_EVENT_REQUEST, number,
              msisdn, rsu=RequestedServiceUnit(cc_service_specific_units=1),
              action=action)
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    return req, ans


def check_balance(peer: Peer, check: str) -> tuple[Fraction, int, int]:
    _req, ans = event(peer, check, BOB, C.E_REQUESTED_ACTION_CHECK_BALANCE)
    cbr = [a.value for a in top(ans, A_CBR)]
    if cbr != [C.E_CHECK_BALANCE_RESULT_ENOUGH_CREDIT]:
        fail(check, f"Check-Balance-Result {cbr}, want [0] ENOUGH_CREDIT", ans)
    bal = balance_of(ans, check)
    ok(check, f"Check-Balance-Result 0, Remaining-Balance {eur(bal[0])} EUR")
    return bal


def wait_settled(peer: Peer, check: str, want: Fraction) -> tuple[Fraction, int, int]:
    """Bob is an on_file account with a card: once a session or event ends, gyro's settlement
    worker invoices it, charges the card (sandbox) and restores the credit line. This polls
    CHECK_BALANCE (up to 10 s) until the balance is back to `want`, so later checks do not race
    the worker, and checks that the settlement happened."""
    deadline = time.monotonic() + 10
    while True:
        _req, ans = event(peer, check, BOB, C.E_REQUESTED_ACTION_CHECK_BALANCE)
        bal = balance_of(ans, check)
        if bal[0] == want:
            ok(check, f"Remaining-Balance {eur(bal[0])} EUR")
            return bal
        if time.monotonic() > deadline:
            fail(check, f"Remaining-Balance still {eur(bal[0])} EUR after 10 s, want {eur(want)} "
                        "(the invoice was not paid, or the credit line not restored)", ans)
        time.sleep(0.05)


def expect_grants(ans: Message, check: str, rgs: list[int], exact_quota: bool):
    got = mscc_map(ans, check)
    if sorted(k for k in got if k is not None) != sorted(rgs) or None in got:
        fail(check, f"MSCC Rating-Groups {sorted(got, key=str)}, want {rgs}", ans)
    details = []
    for rg in rgs:
        m = got[rg]
        rc = [a.value for a in kids(m, C.AVP_RESULT_CODE)]
        if rc != [2001]:
            fail(check, f"MSCC rg {rg}: Result-Code {rc}, want [2001]", ans)
        gsu = one(kids(m, A_GSU), f"MSCC rg {rg} Granted-Service-Unit", check, ans)
        tot = [a.value for a in kids(gsu, A_TOTAL)]
        if exact_quota and tot != [QUOTA]:
            fail(check, f"MSCC rg {rg}: GSU CC-Total-Octets {tot}, want "
                        f"[{QUOTA}] (10 MiB)", ans)
        if not exact_quota and (len(tot) != 1 or tot[0] <= 0):
            fail(check, f"MSCC rg {rg}: GSU CC-Total-Octets {tot}, want one "
                        f"value > 0", ans)
        vt = [a.value for a in kids(m, A_VT)]
        if len(vt) != 1 or not 0 < vt[0] <= MAX_VALIDITY:
            fail(check, f"MSCC rg {rg}: Validity-Time {vt}, want one value in "
                        f"1..{MAX_VALIDITY}", ans)
        details.append(f"rg{rg} 2001 GSU {tot[0]} VT {vt[0]}")
    return ", ".join(details)


def step_data_session(peer: Peer, r0: Fraction) -> tuple[Fraction, int, int]:
    sid = new_session_id("gy-bob")
    I, U, T = (C.E_CC_REQUEST_TYPE_INITIAL_REQUEST,
               C.E_CC_REQUEST_TYPE_UPDATE_REQUEST,
               C.E_CC_REQUEST_TYPE_TERMINATION_REQUEST)

    check = "a1 Bob CCR-I rg10+rg20 (empty RSU) -> 2001, 10 MiB per MSCC"
    req = ccr(peer, sid, CTX_DATA, I, 0, BOB, [mscc(10), mscc(20)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    ok(check, expect_grants(ans, check, [10, 20], exact_quota=True))

    # (number, [(rg, used octets or None)], ...)
    reports: list[int] = []          # every USU amount, for the price bound
    updates = [(1, [(10, 1 * MIB), (20, 2 * MIB)]),
               (2, [(10, 1 * MIB), (20, None)])]
    for number, items in updates:
        desc = " ".join(f"rg{rg}" + (f" USU {u}" if u is not None else "") + "+RSU"
                        for rg, u in items)
        check = f"a{number + 1} Bob CCR-U #{number} ({desc}) -> 2001"
        req = ccr(peer, sid, CTX_DATA, U, number, BOB,
                  [mscc(rg, used=u) for rg, u in items])
        ans = peer.exchange(check, req)
        expect_cca(ans, check, req, 2001)
        ok(check, expect_grants(ans, check, [10, 20], exact_quota=True))
        reports += [u for _rg, u in items if u is not None]
        if number == 1:
            # Open grants are reserved: 2 x 10 MiB granted + 3 MiB used cost
            # at most 0.23 EUR at the undiscounted weekday price (+ at most
            # a cent of rounding per rating group), and more than 0.
            check = ("c0b Bob CHECK_BALANCE mid-session: R0 - 0.25 <= "
                     "Remaining-Balance < R0 (open quota reserved)")
            mid = check_balance(peer, check)[0]
            if not r0 - Fraction(25, 100) <= mid < r0:
                fail(check, f"Remaining-Balance {eur(mid)} EUR with 20 MiB "
                            f"granted and 3 MiB used, R0 {eur(r0)}: want "
                            f"{eur(r0 - Fraction(25, 100))} <= x < {eur(r0)}")

    final = [(10, 512 * 1024), (20, 300000)]
    reports += [u for _rg, u in final]
    check = ("a4 Bob CCR-T (rg10 USU 524288, rg20 USU 300000, FINAL) -> 2001 "
             "with Cost-Information > 0 and Remaining-Balance")
    req = ccr(peer, sid, CTX_DATA, T, 3, BOB,
              [mscc(rg, rsu=False, used=u, final=True) for rg, u in final],
              termination_cause=C.E_TERMINATION_CAUSE_DIAMETER_LOGOUT)
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    for rg, m in mscc_map(ans, check).items():
        rc = [a.value for a in kids(m, C.AVP_RESULT_CODE)]
        if rc and rc != [2001]:
            fail(check, f"MSCC rg {rg} in CCA-T: Result-Code {rc}", ans)
    cost = cost_of(ans, check)
    if cost <= 0:
        fail(check, f"Cost-Information {eur(cost)} EUR, want > 0", ans)
    # Upper bound that holds whatever the day: undiscounted weekday price of
    # every report on its own, each rounded up to 1 KiB and to the cent.
    bound = Fraction(0)
    for u in reports:
        kib = -(-u // 1024)
        bound += Fraction(-(-(kib * DATA_LIST_PRICE * 100) // 1024), 100)
    if cost > bound:
        fail(check, f"Cost-Information {eur(cost)} EUR exceeds {eur(bound)} EUR, "
                    f"the undiscounted weekday price of the reported "
                    f"{sum(reports)} octets", ans)
    bal = balance_of(ans, check)
    ok(check, f"Cost-Information {eur(cost)} EUR (bound {eur(bound)}), "
              f"Remaining-Balance {eur(bal[0])} EUR")

    check = ("c1 Remaining-Balance after the data session = before - "
             "Cost-Information")
    if bal[0] != r0 - cost:
        fail(check, f"before {eur(r0)} - cost {eur(cost)} = {eur(r0 - cost)}, "
                    f"but CCA-T Remaining-Balance is {eur(bal[0])} "
                    f"(off by {eur(bal[0] - (r0 - cost))})", ans)
    ok(check, f"{eur(r0)} - {eur(cost)} = {eur(bal[0])}")
    return bal


def step_rounding(peer: Peer, r_before: Fraction) -> tuple[Fraction, int, int]:
    """Three 100 KiB reports on one rating group: the catalog rates the
    cumulative 300 KiB and rounds up to the cent once, so the charge is
    exactly 0.01 EUR on any day (0.0029 EUR at the undiscounted weekday
    price, less at the weekend or with Bob's discount).  Rounding each
    report on its own would give 0.03."""
    sid = new_session_id("gy-bob-rounding")
    piece = 100 * 1024
    check = "a5 Bob CCR-I rg30 -> 2001"
    req = ccr(peer, sid, CTX_DATA, C.E_CC_REQUEST_TYPE_INITIAL_REQUEST, 0,
              BOB, [mscc(30)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    ok(check, expect_grants(ans, check, [30], exact_quota=True))
    check = "a6 Bob CCR-U rg30 USU 102400 -> 2001"
    req = ccr(peer, sid, CTX_DATA, C.E_CC_REQUEST_TYPE_UPDATE_REQUEST, 1,
              BOB, [mscc(30, used=piece)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    ok(check, expect_grants(ans, check, [30], exact_quota=True))
    check = "a7 Bob CCR-U rg30 USU 102400 (2nd) -> 2001"
    req = ccr(peer, sid, CTX_DATA, C.E_CC_REQUEST_TYPE_UPDATE_REQUEST, 2,
              BOB, [mscc(30, used=piece)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    ok(check, expect_grants(ans, check, [30], exact_quota=True))
    check = ("a8 Bob CCR-T rg30 USU 102400 FINAL -> 2001, cost exactly 0.01 "
             "(300 KiB rated cumulatively, rounded up once)")
    req = ccr(peer, sid, CTX_DATA, C.E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 3,
              BOB, [mscc(30, rsu=False, used=piece, final=True)],
              termination_cause=C.E_TERMINATION_CAUSE_DIAMETER_LOGOUT)
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    cost = cost_of(ans, check)
    if cost != Fraction(1, 100):
        fail(check, f"Cost-Information {eur(cost)} EUR, want 0.01 (0.03 would "
                    f"mean each report was rounded up on its own)", ans)
    bal = balance_of(ans, check)
    ok(check, f"Cost-Information {eur(cost)}, Remaining-Balance {eur(bal[0])}")
    check = "c4 Remaining-Balance after the 300 KiB session = before - 0.01"
    if bal[0] != r_before - cost:
        fail(check, f"before {eur(r_before)} - {eur(cost)} = "
                    f"{eur(r_before - cost)}, CCA-T says {eur(bal[0])}", ans)
    ok(check, f"{eur(r_before)} - {eur(cost)} = {eur(bal[0])}")
    return bal


def step_sms(peer: Peer, r_before: Fraction) -> tuple[Fraction, int, int]:
    check = "b1 Bob SMS CCR-E DIRECT_DEBITING -> 2001, cost 0.09 EUR"
    sid = new_session_id("sms-bob")
    req = ccr(peer, sid, CTX_SMS, C.E_CC_REQUEST_TYPE_EVENT_REQUEST, 0, BOB,
              rsu=RequestedServiceUnit(cc_service_specific_units=1),
              action=C.E_REQUESTED_ACTION_DIRECT_DEBITING)
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    cost = cost_of(ans, check)
    if cost != SMS_PRICE:
        fail(check, f"Cost-Information {eur(cost)} EUR, want {eur(SMS_PRICE)}", ans)
    bal = balance_of(ans, check)
    ok(check, f"Cost-Information {eur(cost)} EUR, Remaining-Balance {eur(bal[0])} EUR")

    check = "c2 Remaining-Balance after the SMS = before - 0.09 exactly"
    if bal[0] != r_before - SMS_PRICE:
        fail(check, f"before {eur(r_before)} - 0.09 = {eur(r_before - SMS_PRICE)}, "
                    f"but the CCA-E says {eur(bal[0])}", ans)
    ok(check, f"{eur(r_before)} - 0.09 = {eur(bal[0])}")

    check = ("b2 same CCR-E again (same Session-Id, CC-Request-Number, "
             "End-to-End, T flag) -> same answer, not charged again")
    dup = ccr(peer, sid, CTX_SMS, C.E_CC_REQUEST_TYPE_EVENT_REQUEST, 0, BOB,
              rsu=RequestedServiceUnit(cc_service_specific_units=1),
              action=C.E_REQUESTED_ACTION_DIRECT_DEBITING)
    dup.header.end_to_end_identifier = req.header.end_to_end_identifier
    dup.header.is_retransmit = True
    ans2 = peer.exchange(check, dup)
    expect_cca(ans2, check, dup, 2001)
    cost2 = cost_of(ans2, check)
    bal2 = balance_of(ans2, check)
    if cost2 != cost:
        fail(check, f"Cost-Information {eur(cost2)} EUR, first answer said "
                    f"{eur(cost)}", ans2)
    if bal2[0] != bal[0]:
        fail(check, f"Remaining-Balance {eur(bal2[0])} EUR, first answer said "
                    f"{eur(bal[0])} (charged twice?)", ans2)
    ok(check, f"Cost-Information {eur(cost2)}, Remaining-Balance {eur(bal2[0])} unchanged")

    # The SMS is settled once (the duplicate adds no settlement): the balance comes back to
    # exactly what it was before the SMS, not beyond.
    settled = wait_settled(peer, "s3 SMS invoiced and paid once: balance back to before the SMS",
                           r_before)

    check = "b3 Bob SMS PRICE_ENQUIRY -> 2001, cost 0.09, balance unchanged"
    _req, ans3 = event(peer, check, BOB, C.E_REQUESTED_ACTION_PRICE_ENQUIRY)
    cost3 = cost_of(ans3, check)
    if cost3 != SMS_PRICE:
        fail(check, f"Cost-Information {eur(cost3)} EUR, want {eur(SMS_PRICE)}", ans3)
    bal3 = balance_of(ans3, check)
    if bal3[0] != settled[0]:
        fail(check, f"Remaining-Balance {eur(bal3[0])} EUR, want {eur(settled[0])} "
                    f"(a price enquiry must not charge)", ans3)
    ok(check, f"Cost-Information {eur(cost3)}, Remaining-Balance {eur(bal3[0])}")

    bal4 = check_balance(peer, "b4 Bob CHECK_BALANCE after the SMS -> 2001")
    check = "c3 balance unchanged by the duplicate and the price enquiry"
    if bal4[0] != settled[0]:
        fail(check, f"CHECK_BALANCE says {eur(bal4[0])} EUR, after the SMS was "
                    f"settled it was {eur(settled[0])}")
    ok(check, f"{eur(bal4[0])} EUR")
    return bal4


def step_failures(peer: Peer):
    I = C.E_CC_REQUEST_TYPE_INITIAL_REQUEST
    for label, msisdn, want in (
            ("Carol (prepaid 0.00)", CAROL, 4012),
            ("Dave (barred)", DAVE, 4010),
            ("e164:491799999999 (unknown)", NOBODY, 5030)):
        check = f"d CCR-I {label} -> {want}"
        req = ccr(peer, new_session_id("gy-" + msisdn), CTX_DATA, I, 0, msisdn,
                  [mscc(10)])
        ans = peer.exchange(check, req)
        expect_cca(ans, check, req, want)
        for rg, m in mscc_map(ans, check).items():
            rc = [a.value for a in kids(m, C.AVP_RESULT_CODE)]
            if rc and rc != [want]:
                fail(check, f"MSCC rg {rg}: Result-Code {rc}, want [{want}]", ans)
            if kids(m, A_GSU):
                fail(check, f"MSCC rg {rg}: a Granted-Service-Unit on a "
                            f"{want} answer", ans)
        ok(check)

    check = "d CCR-U for a session never opened -> 5002"
    req = ccr(peer, new_session_id("gy-unopened"), CTX_DATA,
              C.E_CC_REQUEST_TYPE_UPDATE_REQUEST, 1, BOB,
              [mscc(10, used=MIB)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 5002)
    ok(check)

    check = ("d Erin CCR-I data -> 2001, grant < 10 MiB, FUI REDIRECT "
             + TOPUP_URL)
    sid = new_session_id("gy-erin")
    req = ccr(peer, sid, CTX_DATA, I, 0, ERIN, [mscc(10)])
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    expect_grants(ans, check, [10], exact_quota=False)
    m = mscc_map(ans, check)[10]
    gsu = kids(kids(m, A_GSU)[0], A_TOTAL)[0].value
    if not 0 < gsu < QUOTA:
        fail(check, f"GSU CC-Total-Octets {gsu}, want 0 < x < {QUOTA}", ans)
    fui = one(kids(m, A_FUI), "MSCC Final-Unit-Indication", check, ans)
    fua = [a.value for a in kids(fui, A_FUA)]
    if fua != [C.E_FINAL_UNIT_ACTION_REDIRECT]:
        fail(check, f"Final-Unit-Action {fua}, want [1] REDIRECT", ans)
    rs = one(kids(fui, A_RS), "FUI Redirect-Server", check, ans)
    rat = [a.value for a in kids(rs, A_RAT)]
    rsa = [a.value for a in kids(rs, A_RSA)]
    if rat != [C.E_REDIRECT_ADDRESS_TYPE_URL]:
        fail(check, f"Redirect-Address-Type {rat}, want [2] URL", ans)
    if rsa != [TOPUP_URL]:
        fail(check, f"Redirect-Server-Address {rsa}, want [{TOPUP_URL!r}]", ans)
    ok(check, f"GSU {gsu} octets, FUI REDIRECT URL {rsa[0]}")

    check = "d Erin CCR-T with no usage -> 2001, Cost-Information 0"
    req = ccr(peer, sid, CTX_DATA, C.E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 1,
              ERIN, [mscc(10, rsu=False, used=0, final=True)],
              termination_cause=C.E_TERMINATION_CAUSE_DIAMETER_LOGOUT)
    ans = peer.exchange(check, req)
    expect_cca(ans, check, req, 2001)
    cost = cost_of(ans, check)
    if cost != 0:
        fail(check, f"Cost-Information {eur(cost)} EUR for 0 octets, want 0", ans)
    bal = balance_of(ans, check)
    ok(check, f"Remaining-Balance {eur(bal[0])} EUR")


def step_dpr(peer: Peer):
    check = "e DPR -> DPA 2001"
    m = DisconnectPeerRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.disconnect_cause = C.E_DISCONNECT_CAUSE_REBOOTING
    dpa = peer.exchange(check, peer.next_ids(m))
    rc = [a.value for a in top(dpa, C.AVP_RESULT_CODE)]
    if rc != [2001]:
        fail(check, f"Result-Code {rc}, want [2001]", dpa)
    ok(check)

    check = "e server closes the connection after DPA"
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
        r0 = check_balance(peer, "c0 Bob CHECK_BALANCE before the data session -> 2001")
        r1 = step_data_session(peer, r0[0])
        if r1[0] >= r0[0]:
            fail("c1b the data session lowered the balance", f"{eur(r1[0])} >= {eur(r0[0])}")
        r1b = wait_settled(peer, "s1 data session invoiced and paid by card: CHECK_BALANCE back "
                                 "to R0 (reservations released, credit line restored)", r0[0])
        step_rounding(peer, r1b[0])
        r2 = wait_settled(peer, "s2 rg30 session invoiced and paid: balance back to R0", r0[0])
        last = step_sms(peer, r2[0])
        step_failures(peer)
        step_dpr(peer)
    except CheckFailed as e:
        print(f"FAIL {e}", flush=True)
        return 1
    finally:
        peer.sock.close()
    _val, digits, exp = last
    path = os.environ.get("CC_REMAINING_FILE")
    if path:
        with open(path, "w") as f:
            f.write(f"{digits} {exp}\n")
    print("cc_session: all checks passed", flush=True)
    print(f"REMAINING {digits} {exp}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
