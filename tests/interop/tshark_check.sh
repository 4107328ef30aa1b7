#!/usr/bin/env bash
# Check a Diameter capture with tshark (Wireshark's dissector as an
# independent decoder).
#
# usage: tshark_check.sh [--allow REGEX]... PCAP
#
# Fails (exit 1) when
#   - tshark cannot read the file,
#   - any frame carrying Diameter is malformed (_ws.malformed),
#   - the Diameter dissector raised any expert info of severity Error, or of
#     severity Warning whose summary does not match one of the --allow
#     regexes (Python `re.search` syntax; for warnings caused on purpose,
#     e.g. --allow '^Unknown AVP 99999 ' for a deliberately unknown AVP),
#   - the capture holds no Diameter message at all.
# Prints the number of Diameter messages per command code (requests and
# answers).  Expert infos raised by other protocols (e.g. TCP
# "Connection reset (RST)") are listed but do not fail the check.
# Exit 2: usage error or tshark / python3 missing.
#
# Known dissector quirks (TShark 4.0.17):
#   - an empty Grouped AVP, e.g. Requested-Service-Unit {} in a CCR (legal
#     per RFC 4006), raises Warning "Data is empty": for CCR traffic pass
#     --allow '^Data is empty$'
#   - a request with the R and E bits both set is not recognised as Diameter
#     at all (shown as "Continuation"), so it raises nothing
#   - a Message Length that is not a multiple of 4 is likewise not dissected
#
# Env: DIAMETER_PORT (default 3868) is decoded as Diameter (-d).
# Filter syntax checked with TShark 4.0.17 (Debian bookworm):
#   _ws.expert.severity >= "Warning"   (value-string form; numeric 6291456
#                                       = 0x600000 is equivalent)
set -u -o pipefail

die() { echo "tshark_check: $*" >&2; exit 2; }

allow=()
while [ $# -gt 0 ]; do
    case "$1" in
        --allow) [ $# -ge 2 ] || die "--allow needs a REGEX"; allow+=("$2"); shift 2 ;;
        --allow=*) allow+=("${1#--allow=}"); shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: $0 [--allow REGEX]... PCAP"
pcap=$1
[ -r "$pcap" ] || die "cannot read $pcap"
command -v tshark >/dev/null 2>&1 || die "tshark not found (apt-get install -y tshark)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

port=${DIAMETER_PORT:-3868}
TS=(tshark -n -r "$pcap" -d "tcp.port==${port},diameter")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "tshark_check: $pcap ($(tshark --version 2>/dev/null | head -1 | cut -d' ' -f1-3))"

# 1. malformed Diameter frames (never allowed)
if ! "${TS[@]}" -Y 'diameter && _ws.malformed' >"$tmp/malformed" 2>"$tmp/err"; then
    echo "FAIL tshark could not read $pcap:"; cat "$tmp/err"; exit 1
fi

# 2. expert infos >= Warning, with the protocol that raised them
"${TS[@]}" -q -z expert,warn >"$tmp/expert" 2>"$tmp/err" \
    || { echo "FAIL tshark -z expert failed:"; cat "$tmp/err"; exit 1; }
# frames with Diameter and a >= Warning expert info, for the log
"${TS[@]}" -Y 'diameter && _ws.expert.severity >= "Warning"' \
    -T fields -E separator=' ' -e frame.number -e diameter.cmd.code \
    -e diameter.flags.request -e _ws.expert.message >"$tmp/frames" 2>/dev/null

# 3. Diameter messages (one line per frame; several PDUs per frame are
#    comma-separated by tshark)
"${TS[@]}" -Y diameter -T fields -E occurrence=a -E aggregator=, \
    -e diameter.cmd.code -e diameter.flags.request >"$tmp/msgs" 2>/dev/null

ALLOW=$(printf '%s\n' "${allow[@]+"${allow[@]}"}") python3 - "$tmp" <<'PY'
import os, re, sys
from collections import Counter

tmp = sys.argv[1]
allow = [re.compile(a) for a in os.environ.get("ALLOW", "").splitlines() if a]
NAMES = {257: "Capabilities-Exchange", 258: "Re-Auth", 271: "Accounting",
         272: "Credit-Control", 274: "Abort-Session",
         275: "Session-Termination", 280: "Device-Watchdog",
         282: "Disconnect-Peer"}
failed = False

malformed = [l for l in open(f"{tmp}/malformed").read().splitlines() if l.strip()]
if malformed:
    failed = True
    print(f"FAIL {len(malformed)} malformed Diameter frame(s):")
    for l in malformed:
        print("   ", l.strip())

# -z expert output: "Errors (n)" / "Warns (n)" sections, then rows
#   "<freq> <group> <protocol>  <summary>" (printf "%12u %10s %18s  %s")
section = None
row = re.compile(r"^\s*(\d+)\s+(.+?)\s+(\S+)  (.*)$")
bad, allowed, other = [], [], []
for line in open(f"{tmp}/expert").read().splitlines():
    m = re.match(r"^(Errors|Warns|Notes|Chats|Comments) \(\d+\)", line)
    if m:
        section = m.group(1)
        continue
    if section not in ("Errors", "Warns"):
        continue
    m = row.match(line)
    if not m or m.group(1) == "Frequency":
        continue
    freq, group, proto, summary = m.groups()
    item = f"{section[:-1].lower()}: {freq} x [{group}/{proto}] {summary}"
    if proto.lower() != "diameter" and group != "Malformed":
        other.append(item)
    elif section == "Warns" and group != "Malformed" and any(a.search(summary) for a in allow):
        allowed.append(item)
    else:
        bad.append(item)

for i in allowed:
    print(f"  allowed {i}")
for i in other:
    print(f"  ignored (not Diameter) {i}")
if bad:
    failed = True
    print(f"FAIL {len(bad)} Diameter expert info(s) of severity Warning/Error:")
    for i in bad:
        print(f"    {i}")
    frames = open(f"{tmp}/frames").read().strip()
    if frames:
        print("  frames (frame cmd R-flag messages):")
        for l in frames.splitlines():
            print("   ", l)

counts = Counter()
for line in open(f"{tmp}/msgs").read().splitlines():
    if not line.strip():
        continue
    parts = line.split("\t")
    codes = parts[0].split(",") if parts[0] else []
    reqs = parts[1].split(",") if len(parts) > 1 and parts[1] else []
    for i, c in enumerate(codes):
        r = reqs[i] if i < len(reqs) else "?"
        kind = "request" if r in ("1", "True") else "answer" if r in ("0", "False") else "?"
        counts[(int(c), kind)] += 1

total = sum(counts.values())
print(f"Diameter messages: {total}")
for code in sorted({c for c, _ in counts}):
    print(f"  {code:>4} {NAMES.get(code, 'unknown'):<22} requests {counts[(code, 'request')]:>4}"
          f"  answers {counts[(code, 'answer')]:>4}")
if total == 0:
    failed = True
    print("FAIL no Diameter message in the capture")

print("tshark_check: FAIL" if failed else "tshark_check: OK")
sys.exit(1 if failed else 0)
PY
