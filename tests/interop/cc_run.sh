#!/usr/bin/env bash
# Credit-control interop run against a gyro binary built with the
# credit-control engine (embedded demo catalog).
#
# usage: tests/interop/cc_run.sh PATH_TO_GYRO_BINARY
#
# 1. checks the tools (python3 + python-diameter, tshark, timeout) - a
#    missing tool is a failure, never a skip
# 2. starts "$GYRO serve --listen 127.0.0.1:PORT" in a fresh temp dir (its
#    cwd; no config, so the embedded demo catalog), waits up to 20 s for the
#    port to accept
# 3. captures loopback tcp/PORT with tshark while cc_session.py runs (Gy
#    data session, SMS events, balance consistency, error cases; see its
#    header)
# 4. asks gyro's own client for Bob's balance:
#      $GYRO ccr --type event --action check-balance --subscriber
#      e164:491700000002 --context 32274@3gpp.org --unit events --requested 1
#    and checks that its decoded Remaining-Balance equals (as a number) the
#    last Remaining-Balance cc_session.py saw
# 5. checks the capture with tshark_check.sh (allowing only the "Data is
#    empty" warning that the empty Requested-Service-Unit {} causes)
# 6. stops gyro with SIGTERM: it must exit with status 0 within 10 s; its
#    log must not contain a panic
# Exits 0 only when every step passed.
#
# Env: INTEROP_OUT=DIR  copy gyro.log, capture.pcap and the other logs there
#      KEEP_TMP=1       keep the temp dir (it is kept anyway on failure)
#      GYRO_PORT        port gyro listens on (default 3868)
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=${GYRO_PORT:-3868}
HOST=127.0.0.1
BOB=e164:491700000002

fatal() { echo "cc_run.sh: FAIL: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 PATH_TO_GYRO_BINARY" >&2; exit 2; }
GYRO=$1
case "$GYRO" in /*) ;; *) GYRO="$PWD/$GYRO" ;; esac
[ -f "$GYRO" ] && [ -x "$GYRO" ] || fatal "gyro binary '$1' not found or not executable"

# --- tools: fail loudly, never skip -----------------------------------------
command -v python3 >/dev/null 2>&1 || fatal "python3 not found"
python3 -c 'import diameter.message' 2>/dev/null \
    || fatal "python-diameter is not installed for $(command -v python3) (pip install python-diameter==0.9.0)"
command -v tshark >/dev/null 2>&1 \
    || fatal "tshark not found (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y tshark)"
command -v timeout >/dev/null 2>&1 || fatal "coreutils 'timeout' not found"
"$GYRO" ccr --help >/dev/null 2>&1 || fatal "'$GYRO ccr --help' failed: this gyro has no ccr client"

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

port_open && fatal "something already listens on $HOST:$PORT; stop it first"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gyro-cc-interop.XXXXXX")
GYRO_PID=""
TSHARK_PID=""
failures=()
fail_step() { failures+=("$1"); echo "cc_run.sh: step failed: $1"; }

cleanup() {
    local rc=$?
    if [ -n "$TSHARK_PID" ] && kill -0 "$TSHARK_PID" 2>/dev/null; then
        kill -INT "$TSHARK_PID" 2>/dev/null; wait "$TSHARK_PID" 2>/dev/null
    fi
    if [ -n "$GYRO_PID" ] && kill -0 "$GYRO_PID" 2>/dev/null; then
        kill -KILL "$GYRO_PID" 2>/dev/null; wait "$GYRO_PID" 2>/dev/null
    fi
    if [ -n "${INTEROP_OUT:-}" ]; then
        mkdir -p "$INTEROP_OUT" && cp -f "$TMP"/*.log "$TMP"/*.pcap "$INTEROP_OUT"/ 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ -z "${KEEP_TMP:-}" ]; then
        rm -rf "$TMP"
    else
        echo "cc_run.sh: logs and capture kept in $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- start gyro -------------------------------------------------------------
echo "cc_run.sh: starting $GYRO serve --listen $HOST:$PORT --data-dir $TMP/data (cwd $TMP)"
(cd "$TMP" && exec "$GYRO" serve --listen "$HOST:$PORT" --data-dir "$TMP/data") >"$TMP/gyro.log" 2>&1 &
GYRO_PID=$!

deadline=$((SECONDS + 20))
until port_open; do
    if ! kill -0 "$GYRO_PID" 2>/dev/null; then
        wait "$GYRO_PID"; st=$?
        echo "--- gyro.log (tail)"; tail -n 30 "$TMP/gyro.log"
        GYRO_PID=""
        fatal "gyro exited with status $st before listening on $HOST:$PORT"
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "--- gyro.log (tail)"; tail -n 30 "$TMP/gyro.log"
        fatal "gyro did not accept connections on $HOST:$PORT within 20 s"
    fi
    sleep 0.2
done
echo "cc_run.sh: gyro (pid $GYRO_PID) accepts on $HOST:$PORT"

# --- capture ----------------------------------------------------------------
PCAP="$TMP/capture.pcap"
tshark -n -i lo -f "tcp port $PORT" -w "$PCAP" -q >"$TMP/tshark-capture.log" 2>&1 &
TSHARK_PID=$!
deadline=$((SECONDS + 15))
# dumpcap writes the pcap file header as soon as the capture runs
until [ -s "$PCAP" ] && grep -q "Capturing on" "$TMP/tshark-capture.log"; do
    if ! kill -0 "$TSHARK_PID" 2>/dev/null; then
        cat "$TMP/tshark-capture.log"; TSHARK_PID=""
        fatal "tshark capture on lo did not start (need root or CAP_NET_RAW)"
    fi
    [ $SECONDS -lt $deadline ] || { cat "$TMP/tshark-capture.log"; fatal "tshark capture did not start within 15 s"; }
    sleep 0.2
done
sleep 0.5

# --- cc_session.py ----------------------------------------------------------
echo "cc_run.sh: cc_session.py"
REMAINING_FILE="$TMP/remaining.txt"
session_ok=1
if ! CC_REMAINING_FILE="$REMAINING_FILE" timeout 120 \
        python3 "$HERE/cc_session.py" "$HOST" "$PORT" 2>&1 | tee "$TMP/cc_session.log"; then
    fail_step "cc_session.py"
    session_ok=0
fi

# --- final balance through gyro's own client ---------------------------------
if [ "$session_ok" -eq 1 ]; then
    echo "cc_run.sh: gyro ccr check-balance for $BOB"
    CCR=("$GYRO" ccr --server "$HOST:$PORT" --type event --action check-balance
         --subscriber "$BOB" --context 32274@3gpp.org --unit events --requested 1
         --expect 2001)
    echo "cc_run.sh: \$ ${CCR[*]}"
    timeout 30 "${CCR[@]}" >"$TMP/gyro-ccr.log" 2>&1
    st=$?
    cat "$TMP/gyro-ccr.log"
    if [ "$st" -ne 0 ]; then
        fail_step "gyro ccr check-balance exited with status $st"
    elif ! [ -s "$REMAINING_FILE" ]; then
        fail_step "cc_session.py passed but wrote no $REMAINING_FILE"
    elif ! python3 - "$TMP/gyro-ccr.log" "$REMAINING_FILE" <<'PY'
import re, sys
from fractions import Fraction

out = open(sys.argv[1]).read().splitlines()
digits, exp = (int(x) for x in open(sys.argv[2]).read().split())
want = Fraction(digits) * Fraction(10) ** exp

def fail(why):
    print(f"FAIL gyro ccr balance: {why}")
    sys.exit(1)

# Locate the answer dump ("<<< Credit-Control-Answer ..."), then the
# Remaining-Balance(2021 v=10415) block in it: the lines indented deeper.
try:
    start = next(i for i, l in enumerate(out) if l.startswith("<<< "))
except StopIteration:
    fail("no '<<< ' answer dump in the output")
blocks = []
for i in range(start, len(out)):
    m = re.match(r"^(\s*)Remaining-Balance\(2021 v=10415\)", out[i])
    if not m:
        continue
    ind = len(m.group(1))
    body = []
    for l in out[i + 1:]:
        if len(l) - len(l.lstrip()) <= ind or not l.strip():
            break
        body.append(l)
    blocks.append(body)
if len(blocks) != 1:
    fail(f"{len(blocks)} Remaining-Balance(2021 v=10415) AVPs in the answer dump, want 1")
body = "\n".join(blocks[0])
vd = re.findall(r"Value-Digits\(447\)\s+\S*\s*=\s*(-?\d+)", body)
ex = re.findall(r"Exponent\(429\)\s+\S*\s*=\s*(-?\d+)", body)
cc = re.findall(r"Currency-Code\(425\)\s+\S*\s*=\s*(\d+)", body)
if len(vd) != 1 or len(ex) > 1:
    fail(f"cannot read one Value-Digits / at most one Exponent from:\n{body}")
if cc != ["978"]:
    fail(f"Currency-Code {cc}, want ['978'] in:\n{body}")
got = Fraction(int(vd[0])) * Fraction(10) ** (int(ex[0]) if ex else 0)
if got != want:
    fail(f"gyro ccr shows Value-Digits {vd[0]} Exponent {ex[0] if ex else 0} "
         f"= {float(got):.6f} EUR, cc_session.py last saw {digits} x 10^{exp} "
         f"= {float(want):.6f} EUR")
print(f"PASS gyro ccr Remaining-Balance {vd[0]} x 10^{ex[0] if ex else 0} EUR "
      f"= cc_session.py's last Remaining-Balance {digits} x 10^{exp}")
PY
    then
        fail_step "gyro ccr Remaining-Balance differs from cc_session.py's"
    fi
else
    echo "cc_run.sh: skipping the gyro ccr balance check (cc_session.py failed)"
fi

# --- stop capture, check it -------------------------------------------------
sleep 1
kill -INT "$TSHARK_PID" 2>/dev/null
wait "$TSHARK_PID" 2>/dev/null
TSHARK_PID=""
echo "cc_run.sh: tshark_check.sh"
# Requested-Service-Unit {} (empty, legal per RFC 4006) makes TShark 4.0
# warn "Data is empty"; nothing else is allowed.
if ! bash "$HERE/tshark_check.sh" --allow '^Data is empty$' "$PCAP" 2>&1 | tee "$TMP/tshark_check.log"; then
    fail_step "tshark_check.sh"
fi

# --- stop gyro --------------------------------------------------------------
echo "cc_run.sh: SIGTERM to gyro (pid $GYRO_PID)"
if kill -0 "$GYRO_PID" 2>/dev/null; then
    kill -TERM "$GYRO_PID"
    deadline=$((SECONDS + 10))
    while kill -0 "$GYRO_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$GYRO_PID" 2>/dev/null; then
        fail_step "gyro still running 10 s after SIGTERM (killed)"
        kill -KILL "$GYRO_PID" 2>/dev/null; wait "$GYRO_PID" 2>/dev/null
    else
        wait "$GYRO_PID"; st=$?
        if [ "$st" -ne 0 ]; then
            fail_step "gyro exited with status $st after SIGTERM (want 0)"
        else
            echo "cc_run.sh: gyro exited 0"
        fi
    fi
else
    wait "$GYRO_PID"; st=$?
    fail_step "gyro had already exited (status $st) before SIGTERM"
fi
GYRO_PID=""
if grep -q "panicked" "$TMP/gyro.log"; then
    fail_step "gyro.log contains a panic"
fi

if [ ${#failures[@]} -ne 0 ]; then
    echo "--- gyro.log (tail)"; tail -n 40 "$TMP/gyro.log"
    echo "cc_run.sh: FAIL (${#failures[@]}): ${failures[*]}"
    exit 1
fi
echo "cc_run.sh: OK"
