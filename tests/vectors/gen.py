#!/usr/bin/env python3
"""Generate gyro's golden Diameter wire vectors with python-diameter.

    pip install python-diameter==0.9.0
    python3 tests/vectors/gen.py            # (re)write tests/vectors/*.bin
    python3 tests/vectors/gen.py --check    # regenerate in memory, compare
                                            # with the files on disk, exit 1
                                            # on any difference

Every valid vector is built with python-diameter's message classes and
encoder (``Message.as_bytes``); nothing valid is hand-written.  The output is
deterministic: fixed Hop-by-Hop / End-to-End identifiers, fixed Session-Ids,
fixed Origin-State-Ids, a fixed Event-Timestamp (timezone-aware, so the local
TZ does not matter) and nothing read from the clock or a random source.

One deliberate post-processing step is applied to the encoder's AVP list
(``fix_flags``): python-diameter 0.9.0's Credit-Control classes declare
Origin-Host / Origin-Realm / Destination-Host with ``is_mandatory=False``,
which contradicts RFC 6733 (those AVPs MUST have the M bit).  ``fix_flags``
sets the M bit on them again before the message is rendered.  The AVP
payloads, order and padding are untouched encoder output.

Invalid vectors are produced by mutating the encoder's bytes of a valid
message; each mutation is described in the ``INVALID`` table below and in
README.md.

After writing, every valid vector is verified:
  1. raw round trip: ``Message.from_bytes(b, plain_msg=True).as_bytes() == b``
  2. typed round trip: ``Message.from_bytes(b)`` yields the expected class
     (e.g. CreditControlRequest), key fields read back with the expected
     values, and re-encoding the typed object (plus the same ``fix_flags``)
     gives ``b`` again.
"""
from __future__ import annotations

import argparse
import datetime
import os
import struct
import sys

try:
    import diameter  # noqa: F401
    from diameter.message import Avp, Message, MessageHeader
    from diameter.message.avp import AvpGrouped
    from diameter.message.avp.grouped import (
        GrantedServiceUnit, MultipleServicesCreditControl, PsInformation,
        RequestedServiceUnit, ServiceInformation, SubscriptionId,
        UsedServiceUnit, VendorSpecificApplicationId)
    from diameter.message.commands import (
        CapabilitiesExchangeAnswer, CapabilitiesExchangeRequest,
        CreditControlAnswer, CreditControlRequest, DeviceWatchdogAnswer,
        DeviceWatchdogRequest, DisconnectPeerAnswer, DisconnectPeerRequest)
    from diameter.message import constants as C
except ImportError as e:  # pragma: no cover
    sys.exit(f"gen.py: python-diameter is not installed ({e}); "
             f"run: pip install python-diameter==0.9.0")

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIAMETER_VERSION = "0.9.0"

# ---------------------------------------------------------------------------
# Fixed identities and ids
# ---------------------------------------------------------------------------
CLIENT_HOST = b"pgw1.test.example"
CLIENT_REALM = b"test.example"
SERVER_HOST = b"gyro.localdomain"
SERVER_REALM = b"localdomain"
CLIENT_STATE_ID = 1700000000          # Origin-State-Id of the client
SERVER_STATE_ID = 1700000001          # Origin-State-Id of the server
VENDOR_3GPP = 10415
APP_CC = 4

SESSION_GY = "pgw1.test.example;1700000000;1"
SESSION_SMS = "pgw1.test.example;1700000000;2"
SERVICE_CONTEXT_GY = "32251@3gpp.org"
SERVICE_CONTEXT_SMS = "32274@3gpp.org"
MSISDN = "491700000001"
IMSI = "262010000000001"
# 2024-01-01T00:00:00Z; tz-aware so datetime.timestamp() is TZ independent.
EVENT_TS = datetime.datetime(2024, 1, 1, 0, 0, 0,
                             tzinfo=datetime.timezone.utc)

# (hop-by-hop, end-to-end) per vector; answers reuse their request's ids.
IDS = {
    "cer": (0x00000001, 0x65530001),
    "dwr": (0x00000002, 0x65530002),
    "dpr": (0x00000003, 0x65530003),
    "ccr_i": (0x00000010, 0x65530010),
    "ccr_u": (0x00000011, 0x65530011),
    "ccr_u_10mscc": (0x00000012, 0x65530012),
    "ccr_t": (0x00000013, 0x65530013),
    "ccr_e_sms": (0x00000014, 0x65530014),
    # invalid vectors (ids distinct so answers can be matched)
    "bad_version": (0x00000101, 0x65530101),
    "bad_length": (0x00000102, 0x65530102),
    "bad_msg_length": (0x00000103, 0x65530103),
    "avp_overrun": (0x00000104, 0x65530104),
    "bad_padding": (0x00000105, 0x65530105),
    "avp_short": (0x00000106, 0x65530106),
    "missing_mandatory": (0x00000107, 0x65530107),
    "unknown_mbit_avp": (0x00000108, 0x65530108),
    "unknown_command": (0x00000109, 0x65530109),
    "too_many": (0x0000010a, 0x6553010a),
    "e_bit_request": (0x0000010b, 0x6553010b),
}

# AVPs that RFC 6733 says MUST carry the M bit but that python-diameter 0.9.0
# emits without it in some command classes (CCR/CCA declare is_mandatory=False).
MUST_M = {
    (C.AVP_ORIGIN_HOST, 0), (C.AVP_ORIGIN_REALM, 0),
    (C.AVP_DESTINATION_HOST, 0), (C.AVP_DESTINATION_REALM, 0),
}


def set_ids(msg: Message, name: str) -> Message:
    hbh, e2e = IDS[name]
    msg.header.hop_by_hop_identifier = hbh
    msg.header.end_to_end_identifier = e2e
    return msg


def fix_flags(avps: list[Avp]) -> list[Avp]:
    """Set the M bit on Origin-Host/Realm, Destination-Host/Realm (top level
    only; they never appear nested in our vectors)."""
    for avp in avps:
        if (avp.code, avp.vendor_id) in MUST_M:
            avp.is_mandatory = True
    return avps


def render(msg: Message) -> bytes:
    """Encode with python-diameter after the M-bit fix-up.

    ``DefinedMessage.avps`` regenerates fresh Avp objects from the message
    attributes on every access, so the fixed list is handed to a plain
    ``Message`` that shares the header (same code, flags, app id, ids)."""
    avps = fix_flags(list(msg.avps))
    return Message(msg.header, avps).as_bytes()


# ---------------------------------------------------------------------------
# Valid messages (python-diameter encoder)
# ---------------------------------------------------------------------------
def make_cer() -> Message:
    m = CapabilitiesExchangeRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.host_ip_address = ["127.0.0.1"]          # Address, family 1 (IPv4)
    m.vendor_id = VENDOR_3GPP
    m.product_name = "gyro-testpeer"
    m.origin_state_id = CLIENT_STATE_ID
    m.supported_vendor_id = [VENDOR_3GPP]
    m.auth_application_id = [APP_CC]
    m.vendor_specific_application_id = [
        VendorSpecificApplicationId(vendor_id=VENDOR_3GPP,
                                    auth_application_id=APP_CC)]
    m.firmware_revision = 1
    return set_ids(m, "cer")


def make_cea() -> Message:
    req = make_cer()
    m = req.to_answer()                        # copies ids, clears R bit
    m.result_code = C.E_RESULT_CODE_DIAMETER_SUCCESS
    m.origin_host = SERVER_HOST
    m.origin_realm = SERVER_REALM
    m.host_ip_address = ["127.0.0.1"]
    m.vendor_id = 0
    m.product_name = "gyro"
    m.origin_state_id = SERVER_STATE_ID
    m.supported_vendor_id = [VENDOR_3GPP]
    m.auth_application_id = [APP_CC]
    m.vendor_specific_application_id = [
        VendorSpecificApplicationId(vendor_id=VENDOR_3GPP,
                                    auth_application_id=APP_CC)]
    m.firmware_revision = 1
    return m


def make_dwr(name: str = "dwr") -> Message:
    m = DeviceWatchdogRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.origin_state_id = CLIENT_STATE_ID
    return set_ids(m, name)


def make_dwa() -> Message:
    m = make_dwr().to_answer()
    m.result_code = C.E_RESULT_CODE_DIAMETER_SUCCESS
    m.origin_host = SERVER_HOST
    m.origin_realm = SERVER_REALM
    m.origin_state_id = SERVER_STATE_ID
    return m


def make_dpr() -> Message:
    m = DisconnectPeerRequest()
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.disconnect_cause = C.E_DISCONNECT_CAUSE_REBOOTING   # 0
    return set_ids(m, "dpr")


def make_dpa() -> Message:
    m = make_dpr().to_answer()
    m.result_code = C.E_RESULT_CODE_DIAMETER_SUCCESS
    m.origin_host = SERVER_HOST
    m.origin_realm = SERVER_REALM
    return m


def _ps_service_information() -> ServiceInformation:
    # Kept small on purpose (ccr_u.bin ~ 500 bytes).  Note that python-diameter
    # types 3GPP-Charging-Id as OctetString (TS 29.061 says Unsigned32; the
    # wire bytes are the same 4 octets).
    ps = PsInformation()
    ps.tgpp_charging_id = struct.pack("!I", 0x0A0B0C0D)
    ps.tgpp_imsi_mcc_mnc = "26201"
    ps.called_station_id = "internet"                     # APN (vendor 0)
    ps.tgpp_user_location_info = bytes.fromhex(
        "8262f210000162f2100000a001")                     # TAI+ECGI
    ps.tgpp_rat_type = bytes([6])                         # EUTRAN (29.061)
    si = ServiceInformation()
    si.ps_information = ps
    return si


def _ccr_base(name: str, session_id: str, service_context: str,
              req_type: int, req_number: int | None) -> CreditControlRequest:
    m = CreditControlRequest()
    # python-diameter does NOT set the header Application-Id for CCR (it
    # stays 0); Credit-Control is application 4.
    m.header.application_id = APP_CC
    m.session_id = session_id
    m.origin_host = CLIENT_HOST
    m.origin_realm = CLIENT_REALM
    m.destination_realm = SERVER_REALM
    m.auth_application_id = APP_CC
    m.service_context_id = service_context
    m.cc_request_type = req_type
    m.cc_request_number = req_number
    m.origin_state_id = CLIENT_STATE_ID
    m.event_timestamp = EVENT_TS
    m.add_subscription_id(C.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, MSISDN)
    m.add_subscription_id(C.E_SUBSCRIPTION_ID_TYPE_END_USER_IMSI, IMSI)
    return set_ids(m, name)


def _gy_ccr(name: str, req_type: int, req_number: int | None,
            msccs: list[MultipleServicesCreditControl]) -> CreditControlRequest:
    m = _ccr_base(name, SESSION_GY, SERVICE_CONTEXT_GY, req_type, req_number)
    m.multiple_services_indicator = \
        C.E_MULTIPLE_SERVICES_INDICATOR_MULTIPLE_SERVICES_SUPPORTED   # 1
    m.multiple_services_credit_control = msccs
    m.service_information = _ps_service_information()
    return m


def _usu(total: int, inp: int, out: int,
         reason: int | None = None) -> UsedServiceUnit:
    u = UsedServiceUnit()
    u.cc_total_octets = total
    u.cc_input_octets = inp
    u.cc_output_octets = out
    if reason is not None:
        u.reporting_reason = reason                       # 3GPP 872
    return u


def make_ccr_i(name: str = "ccr_i", with_request_number: bool = True) -> Message:
    mscc = MultipleServicesCreditControl(
        requested_service_unit=RequestedServiceUnit(), rating_group=10)
    return _gy_ccr(name, C.E_CC_REQUEST_TYPE_INITIAL_REQUEST,
                   0 if with_request_number else None, [mscc])


def make_ccr_u(name: str = "ccr_u", n_mscc: int = 1) -> Message:
    msccs = []
    for rg in range(10, 10 + n_mscc):
        msccs.append(MultipleServicesCreditControl(
            requested_service_unit=RequestedServiceUnit(),
            used_service_unit=[_usu(1048576, 262144, 786432)],
            rating_group=rg))
    return _gy_ccr(name, C.E_CC_REQUEST_TYPE_UPDATE_REQUEST, 1, msccs)


def make_ccr_u_10mscc() -> Message:
    return make_ccr_u("ccr_u_10mscc", 10)


def make_ccr_t() -> Message:
    mscc = MultipleServicesCreditControl(
        used_service_unit=[_usu(524288, 131072, 393216,
                                reason=C.E_3GPP_REPORTING_REASON_FINAL)],
        rating_group=10)
    m = _gy_ccr("ccr_t", C.E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 2, [mscc])
    m.termination_cause = C.E_TERMINATION_CAUSE_DIAMETER_LOGOUT       # 1
    return m


def make_cca() -> Message:
    req = make_ccr_u()
    m = req.to_answer()               # CreditControlAnswer, same ids, P bit
    m.session_id = SESSION_GY
    m.result_code = C.E_RESULT_CODE_DIAMETER_SUCCESS
    m.origin_host = SERVER_HOST
    m.origin_realm = SERVER_REALM
    m.auth_application_id = APP_CC
    m.cc_request_type = C.E_CC_REQUEST_TYPE_UPDATE_REQUEST
    m.cc_request_number = 1
    m.add_multiple_services_credit_control(
        granted_service_unit=GrantedServiceUnit(cc_total_octets=10485760),
        rating_group=10,
        validity_time=3600,
        result_code=C.E_RESULT_CODE_DIAMETER_SUCCESS)
    return m


def make_ccr_e_sms() -> Message:
    m = _ccr_base("ccr_e_sms", SESSION_SMS, SERVICE_CONTEXT_SMS,
                  C.E_CC_REQUEST_TYPE_EVENT_REQUEST, 0)
    m.requested_action = C.E_REQUESTED_ACTION_DIRECT_DEBITING          # 0
    m.requested_service_unit = RequestedServiceUnit(
        cc_service_specific_units=1)
    return m


# ---------------------------------------------------------------------------
# Invalid messages: mutations of encoder output
# ---------------------------------------------------------------------------
def _set_msg_length(b: bytes, length: int) -> bytes:
    return bytes([b[0]]) + length.to_bytes(3, "big") + b[4:]


def _avp_offsets(b: bytes) -> list[int]:
    """Offsets of the top-level AVPs of a well-formed message."""
    offs, pos = [], 20
    while pos < len(b):
        offs.append(pos)
        length = int.from_bytes(b[pos + 5:pos + 8], "big")
        pos += (length + 3) & ~3
    return offs


def _set_avp_length(b: bytes, off: int, length: int) -> bytes:
    return b[:off + 5] + length.to_bytes(3, "big") + b[off + 8:]


def bad_version() -> bytes:
    """DWR; version byte (offset 0) changed from 1 to 2."""
    b = render(make_dwr("bad_version"))
    return b"\x02" + b[1:]


def bad_length() -> bytes:
    """DWR; Message Length field set to 19 (< 20-byte header); all the
    original DWR bytes are still sent after the header."""
    return _set_msg_length(render(make_dwr("bad_length")), 19)


def bad_msg_length() -> bytes:
    """DWR + 2 appended zero bytes; Message Length = original + 2 (not a
    multiple of 4, >= 20, equal to the number of bytes present)."""
    b = render(make_dwr("bad_msg_length")) + b"\x00\x00"
    return _set_msg_length(b, len(b))


def avp_overrun() -> bytes:
    """DWR; the last AVP (Origin-State-Id, offset len-12, real length 12)
    gets AVP Length 76, i.e. 64 bytes past the end of the message.  Message
    Length is unchanged and equals the bytes present."""
    b = render(make_dwr("avp_overrun"))
    off = _avp_offsets(b)[-1]
    return _set_avp_length(b, off, 12 + 64)


def bad_padding() -> bytes:
    """DWR with an extra Product-Name "PGW-1" (M bit clear, AVP Length 13)
    encoded by python-diameter between Origin-Realm and Origin-State-Id; the
    3 padding bytes after it are removed so Origin-State-Id starts at an
    offset that is not a multiple of 4.  3 zero bytes are appended at the end
    so that Message Length (= bytes present) stays a multiple of 4 and the
    header check passes: the fault is only visible while walking the AVPs."""
    m = make_dwr("bad_padding")
    m.append_avp(Avp.new(C.AVP_PRODUCT_NAME, value="PGW-1"))
    # put Product-Name before Origin-State-Id
    avps = fix_flags(list(m.avps))
    pn = [a for a in avps if a.code == C.AVP_PRODUCT_NAME][0]
    avps.remove(pn)
    avps.insert(2, pn)
    b = Message(m.header, avps).as_bytes()
    off = _avp_offsets(b)[2]
    assert int.from_bytes(b[off + 5:off + 8], "big") == 13
    b = b[:off + 13] + b[off + 16:] + b"\x00\x00\x00"
    return _set_msg_length(b, len(b))


def avp_short() -> bytes:
    """DWR; the last AVP (Origin-State-Id) gets AVP Length 7 (< 8, the
    minimum AVP header).  Message Length unchanged = bytes present."""
    b = render(make_dwr("avp_short"))
    off = _avp_offsets(b)[-1]
    return _set_avp_length(b, off, 7)


def missing_mandatory() -> bytes:
    """CCR-I encoded by python-diameter with cc_request_number = None, so the
    encoder omits CC-Request-Number (415) altogether."""
    return render(make_ccr_i("missing_mandatory", with_request_number=False))


def unknown_mbit_avp() -> bytes:
    """DWR + Avp(code=99999, vendor 0, flags M, payload 00000001) appended
    with python-diameter's generic Avp class (AVP Length 12)."""
    m = make_dwr("unknown_mbit_avp")
    m.append_avp(Avp(99999, 0, b"\x00\x00\x00\x01",
                     flags=Avp.avp_flag_mandatory))
    return render(m)


def unknown_command() -> bytes:
    """Request (R bit, not proxiable) with command code 999 and Application-Id
    0, built as a plain python-diameter Message carrying Origin-Host,
    Origin-Realm, Origin-State-Id."""
    hbh, e2e = IDS["unknown_command"]
    hdr = MessageHeader(version=1, command_flags=0x80, command_code=999,
                        application_id=0, hop_by_hop_identifier=hbh,
                        end_to_end_identifier=e2e)
    avps = [Avp.new(C.AVP_ORIGIN_HOST, value=CLIENT_HOST),
            Avp.new(C.AVP_ORIGIN_REALM, value=CLIENT_REALM),
            Avp.new(C.AVP_ORIGIN_STATE_ID, value=CLIENT_STATE_ID)]
    return Message(hdr, avps).as_bytes()


def too_many() -> bytes:
    """DWR with a second Origin-Host AVP (same value) appended at the end."""
    m = make_dwr("too_many")
    m.append_avp(Avp.new(C.AVP_ORIGIN_HOST, value=CLIENT_HOST))
    return render(m)


def e_bit_request() -> bytes:
    """DWR encoded with header.is_error = True (flags 0xA0: R and E)."""
    m = make_dwr("e_bit_request")
    m.header.is_error = True
    return render(m)


VALID = {
    "cer": (make_cer, CapabilitiesExchangeRequest),
    "cea": (make_cea, CapabilitiesExchangeAnswer),
    "dwr": (make_dwr, DeviceWatchdogRequest),
    "dwa": (make_dwa, DeviceWatchdogAnswer),
    "dpr": (make_dpr, DisconnectPeerRequest),
    "dpa": (make_dpa, DisconnectPeerAnswer),
    "ccr_i": (make_ccr_i, CreditControlRequest),
    "ccr_u": (make_ccr_u, CreditControlRequest),
    "ccr_u_10mscc": (make_ccr_u_10mscc, CreditControlRequest),
    "ccr_t": (make_ccr_t, CreditControlRequest),
    "cca": (make_cca, CreditControlAnswer),
    "ccr_e_sms": (make_ccr_e_sms, CreditControlRequest),
}

INVALID = {
    "bad_version": bad_version,
    "bad_length": bad_length,
    "bad_msg_length": bad_msg_length,
    "avp_overrun": avp_overrun,
    "bad_padding": bad_padding,
    "avp_short": avp_short,
    "missing_mandatory": missing_mandatory,
    "unknown_mbit_avp": unknown_mbit_avp,
    "unknown_command": unknown_command,
    "too_many": too_many,
    "e_bit_request": e_bit_request,
}


def build_all() -> dict[str, bytes]:
    out = {}
    for name, (fn, _cls) in VALID.items():
        out[name] = render(fn())
    for name, fn in INVALID.items():
        out[name] = fn()
    return out


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------
def _first(msg: Message, *path: tuple[int, int]):
    found = msg.find_avps(*path)
    return found[0].value if found else None


def _check_fields(name: str, msg, plain: Message) -> None:
    """Spot-check typed decode of the valid vectors."""
    def eq(what, got, want):
        if got != want:
            raise AssertionError(f"{name}: {what} = {got!r}, want {want!r}")

    h = msg.header
    if name in ("cer", "dwr", "dpr") or name.startswith("ccr"):
        eq("R bit", h.is_request, True)
    else:
        eq("R bit", h.is_request, False)
    eq("E bit", h.is_error, False)
    key = {"cea": "cer", "dwa": "dwr", "dpa": "dpr", "cca": "ccr_u"}.get(name, name)
    eq("hop-by-hop", h.hop_by_hop_identifier, IDS[key][0])
    eq("end-to-end", h.end_to_end_identifier, IDS[key][1])
    for a in plain.avps:           # wire flags (typed .avps regenerates)
        if (a.code, a.vendor_id) in MUST_M:
            eq(f"M bit of AVP {a.code}", a.is_mandatory, True)

    if name == "cer":
        eq("Origin-Host", msg.origin_host, CLIENT_HOST)
        eq("Host-IP-Address", msg.host_ip_address, [(1, "127.0.0.1")])
        eq("VSAI vendor", msg.vendor_specific_application_id[0].vendor_id,
           VENDOR_3GPP)
        eq("VSAI app", msg.vendor_specific_application_id[0].auth_application_id,
           APP_CC)
    if name in ("cea", "dwa", "dpa", "cca"):
        eq("Result-Code", msg.result_code, 2001)
        eq("Origin-Host", msg.origin_host, SERVER_HOST)
    if name == "dpr":
        eq("Disconnect-Cause", msg.disconnect_cause, 0)
    if name.startswith("ccr"):
        eq("Auth-Application-Id", msg.auth_application_id, 4)
        eq("app id", h.application_id, 4)
        eq("P bit", h.is_proxyable, True)
        eq("Subscription-Id types",
           [s.subscription_id_type for s in msg.subscription_id], [0, 1])
        eq("E164", msg.subscription_id[0].subscription_id_data, MSISDN)
    if name in ("ccr_i", "ccr_u", "ccr_u_10mscc", "ccr_t"):
        eq("Service-Context-Id", msg.service_context_id, SERVICE_CONTEXT_GY)
        eq("MSI", msg.multiple_services_indicator, 1)
        ps = msg.service_information.ps_information
        eq("Called-Station-Id", ps.called_station_id, "internet")
        eq("3GPP-RAT-Type", ps.tgpp_rat_type, b"\x06")
    if name in ("ccr_u", "ccr_u_10mscc"):
        n = 10 if name == "ccr_u_10mscc" else 1
        msccs = msg.multiple_services_credit_control
        eq("MSCC count", len(msccs), n)
        eq("Rating-Groups", [x.rating_group for x in msccs],
           list(range(10, 10 + n)))
        eq("CC-Total-Octets",
           msccs[0].used_service_unit[0].cc_total_octets, 1048576)
        eq("CC-Request-Type", msg.cc_request_type, 2)
    if name == "ccr_t":
        eq("Termination-Cause", msg.termination_cause, 1)
        usu = msg.multiple_services_credit_control[0].used_service_unit[0]
        eq("Reporting-Reason", usu.reporting_reason, 2)
    if name == "cca":
        mscc = msg.multiple_services_credit_control[0]
        eq("GSU total", mscc.granted_service_unit.cc_total_octets, 10485760)
        eq("MSCC Result-Code", mscc.result_code, 2001)
        eq("Validity-Time", mscc.validity_time, 3600)
    if name == "ccr_e_sms":
        eq("CC-Request-Type", msg.cc_request_type, 4)
        eq("Requested-Action", msg.requested_action, 0)
        eq("Service-Context-Id", msg.service_context_id, SERVICE_CONTEXT_SMS)
        eq("CC-Service-Specific-Units",
           msg.requested_service_unit.cc_service_specific_units, 1)


def verify(vectors: dict[str, bytes]) -> None:
    for name, (_fn, cls) in VALID.items():
        b = vectors[name]
        if len(b) % 4 or int.from_bytes(b[1:4], "big") != len(b):
            raise AssertionError(f"{name}: bad framing")
        plain = Message.from_bytes(b, plain_msg=True)
        if plain.as_bytes() != b:
            raise AssertionError(f"{name}: raw round trip differs")
        typed = Message.from_bytes(b)
        if type(typed) is not cls:
            raise AssertionError(
                f"{name}: decoded as {type(typed).__name__}, want {cls.__name__}")
        _check_fields(name, typed, plain)
        if render(typed) != b:
            raise AssertionError(f"{name}: typed round trip differs")
        # every grouped AVP must decode as well
        def walk(avps):
            for a in avps:
                if isinstance(a, AvpGrouped):
                    walk(a.value)
        walk(plain.avps)

    # sanity checks that the mutations did what they claim
    v = vectors
    assert v["bad_version"][0] == 2
    assert int.from_bytes(v["bad_length"][1:4], "big") == 19
    ml = int.from_bytes(v["bad_msg_length"][1:4], "big")
    assert ml % 4 and ml >= 20 and ml == len(v["bad_msg_length"])
    assert int.from_bytes(v["avp_overrun"][1:4], "big") == len(v["avp_overrun"])
    assert int.from_bytes(v["bad_padding"][1:4], "big") == len(v["bad_padding"])
    assert len(v["bad_padding"]) % 4 == 0
    mm = Message.from_bytes(v["missing_mandatory"])
    assert mm.cc_request_number is None and mm.cc_request_type == 1
    assert Message.from_bytes(v["unknown_mbit_avp"]).find_avps((99999, 0))
    assert len(Message.from_bytes(v["too_many"], plain_msg=True)
               .find_avps((C.AVP_ORIGIN_HOST, 0))) == 2
    assert v["e_bit_request"][4] == 0xA0
    uc = Message.from_bytes(v["unknown_command"])
    assert uc.header.command_code == 999 and uc.header.is_request


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with the files on disk instead of writing")
    ap.add_argument("--outdir", default=HERE)
    args = ap.parse_args()

    from importlib.metadata import version
    have = version("python-diameter")
    if have != PYDIAMETER_VERSION:
        print(f"warning: python-diameter {have}, vectors were made with "
              f"{PYDIAMETER_VERSION}", file=sys.stderr)

    vectors = build_all()
    verify(vectors)

    if args.check:
        bad = []
        for name, b in vectors.items():
            path = os.path.join(args.outdir, f"{name}.bin")
            if not os.path.exists(path) or open(path, "rb").read() != b:
                bad.append(name)
        if bad:
            print("differs from disk: " + ", ".join(bad))
            return 1
        print(f"{len(vectors)} vectors match")
        return 0

    for name, b in vectors.items():
        with open(os.path.join(args.outdir, f"{name}.bin"), "wb") as f:
            f.write(b)
        print(f"{name}.bin {len(b)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
