#!/usr/bin/env bash
# Interop run against a gyro binary.
#
# usage: tests/interop/run.sh PATH_TO_GYRO_BINARY
#
# 1. checks the tools (python3 + python-diameter, tshark) - a missing tool
#    is a failure, never a skip
# 2. starts "$GYRO serve" in a fresh temp dir (its cwd; no config), waits up
#    to 20 s for 127.0.0.1:3868 to accept
# 3. captures loopback tcp/3868 with tshark while basic_peer.py (and
#    node_peer.py when present) run against it
# 4. checks the capture with tshark_check.sh
# 5. stops gyro with SIGTERM: it must exit with status 0 within 10 s
# Exits 0 only when every step passed.
#
# Env: INTEROP_OUT=DIR  copy gyro.log, capture.pcap and the peer logs there
#      KEEP_TMP=1       keep the temp dir (it is kept anyway on failure)
#      GYRO_PORT        port gyro listens on (default 3868)
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=${GYRO_PORT:-3868}
HOST=127.0.0.1

fatal() { echo "run.sh: FAIL: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 PATH_TO_GYRO_BINARY" >&2; exit 2; }
GYRO=$1
case "$GYRO" in /*) ;; *) GYRO="$PWD/$GYRO" ;; esac
[ -f "$GYRO" ] && [ -x "$GYRO" ] || fatal "gyro binary '$1' not found or not executable"

# --- tools: fail loudly, never skip -----------------------------------------
command -v python3 >/dev/null 2>&1 || fatal "python3 not found"
python3 -c 'import diameter.message, diameter.node' 2>/dev/null \
    || fatal "python-diameter is not installed for $(command -v python3) (pip install python-diameter==0.9.0)"
command -v tshark >/dev/null 2>&1 \
    || fatal "tshark not found (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y tshark)"
command -v timeout >/dev/null 2>&1 || fatal "coreutils 'timeout' not found"

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

port_open && fatal "something already listens on $HOST:$PORT; stop it first"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gyro-interop.XXXXXX")
GYRO_PID=""
TSHARK_PID=""
failures=()
fail_step() { failures+=("$1"); echo "run.sh: step failed: $1"; }

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
        echo "run.sh: logs and capture kept in $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- start gyro -------------------------------------------------------------
echo "run.sh: starting $GYRO serve (cwd $TMP)"
(cd "$TMP" && exec "$GYRO" serve) >"$TMP/gyro.log" 2>&1 &
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
echo "run.sh: gyro (pid $GYRO_PID) accepts on $HOST:$PORT"

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

# --- peers ------------------------------------------------------------------
echo "run.sh: basic_peer.py"
if ! timeout 120 python3 "$HERE/basic_peer.py" "$HOST" "$PORT" 2>&1 | tee "$TMP/basic_peer.log"; then
    fail_step "basic_peer.py"
fi
if [ -f "$HERE/node_peer.py" ]; then
    echo "run.sh: node_peer.py"
    if ! timeout 120 python3 "$HERE/node_peer.py" "$HOST" "$PORT" 2>&1 | tee "$TMP/node_peer.log"; then
        fail_step "node_peer.py"
    fi
fi

# --- stop capture, check it -------------------------------------------------
sleep 1
kill -INT "$TSHARK_PID" 2>/dev/null
wait "$TSHARK_PID" 2>/dev/null
TSHARK_PID=""
echo "run.sh: tshark_check.sh"
# The warnings allowed are the ones basic_peer.py causes on purpose: a request
# with command code 999 (+ its answer) and an AVP 99999 (in the DWR and in the
# answer's Failed-AVP).
if ! bash "$HERE/tshark_check.sh" --allow '^Unknown command,' --allow '^Unknown AVP 99999 ' "$PCAP" 2>&1 | tee "$TMP/tshark_check.log"; then
    fail_step "tshark_check.sh"
fi

# --- stop gyro --------------------------------------------------------------
echo "run.sh: SIGTERM to gyro (pid $GYRO_PID)"
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
            echo "run.sh: gyro exited 0"
        fi
    fi
else
    wait "$GYRO_PID"; st=$?
    fail_step "gyro had already exited (status $st) before SIGTERM"
fi
GYRO_PID=""

if [ ${#failures[@]} -ne 0 ]; then
    echo "--- gyro.log (tail)"; tail -n 40 "$TMP/gyro.log"
    echo "run.sh: FAIL (${#failures[@]}): ${failures[*]}"
    exit 1
fi
echo "run.sh: OK"
