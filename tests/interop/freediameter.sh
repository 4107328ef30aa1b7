#!/usr/bin/env bash
# Interop run: freeDiameter (freeDiameterd, Debian packages) as a CLIENT peer
# of a gyro binary, plain TCP on loopback, no TLS.
#
# usage: tests/interop/freediameter.sh PATH_TO_GYRO_BINARY
#
# Installs nothing. Needs (Debian bookworm: 1.2.1-8+b1):
#   apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y freediameterd freediameter-extensions
# tshark is optional: when installed, loopback tcp/3868 is captured and the
# capture is checked with tshark_check.sh too (FD_NO_CAPTURE=1 skips it).
#
# 1. starts "$GYRO serve --config" (watchdog_interval_ms = 6000, log level
#    debug) in a temp dir, waits for 127.0.0.1:3868
# 2. freeDiameterd #1 (Identity fd.test.example, Realm test.example, no
#    listening port, ConnectPeer gyro.localdomain) connects: CER/CEA, OPEN on
#    both sides; then SIGTERM to freeDiameterd: it sends DPR, gyro must answer
#    DPA 2001
# 3. freeDiameterd #2 connects again (same identity): OPEN on both sides
# 4. waits up to 20 s for watchdog traffic: at least one DWR/DWA 2001
#    exchange (either direction; both directions are reported)
# 5. SIGTERM to gyro: gyro sends DPR, freeDiameter answers DPA 2001, gyro
#    exits 0 within 10 s
# 6. no ERROR line in the freeDiameter logs, no unexpected WARN/ERROR in
#    gyro's log, and (with tshark) tshark_check.sh passes on the capture
# Everything is bounded: the whole run takes about 25 s, at most 60 s.
# Exits 0 only when every check passed.
#
# freeDiameter 1.2.1 notes (why the config looks like this):
#   - no TLS_Cred => TLS disabled, no certificate needed ("TLS is disabled"
#     NOTICE); SecPort = 0; the peer entry says No_TLS
#   - Port = 0 => freeDiameterd does not listen at all (pure client). A
#     ListenOn with a loopback address is silently dropped by freeDiameter,
#     which would then listen on 0.0.0.0.
#   - no packaged extension registers an application, so the CER advertises
#     Auth-Application-Id 0xffffffff (Relay), which gyro must accept as
#     "supports everything" (common application 4). The dict_* extensions
#     only give the message dumps names for DCCA/3GPP AVPs.
#   - dbg_msg_dumps "0x8888" logs every sent/received message as a tree,
#     plus parsing errors / dropped messages at ERROR level.
#
# Env: INTEROP_OUT=DIR   copy the logs (and capture) there
#      KEEP_TMP=1        keep the temp dir (kept anyway on failure)
#      GYRO_PORT         port gyro listens on (default 3868)
#      FD_EXT_DIR        freeDiameter extension dir (default: found)
#      FD_NO_CAPTURE=1   do not capture even if tshark is installed
#      GYRO_WARN_ALLOW   ERE of gyro WARN lines that are expected
#                        (default: the "CCR is answered with 3007" notice)
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=${GYRO_PORT:-3868}
HOST=127.0.0.1
FD_ID=fd.test.example
FD_REALM=test.example
GYRO_ID=gyro.localdomain
GYRO_WARN_ALLOW=${GYRO_WARN_ALLOW:-credit-control engine is not part of this build}
ME=freediameter.sh

fatal() { echo "$ME: FAIL: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 PATH_TO_GYRO_BINARY" >&2; exit 2; }
GYRO=$1
case "$GYRO" in /*) ;; *) GYRO="$PWD/$GYRO" ;; esac
[ -f "$GYRO" ] && [ -x "$GYRO" ] || fatal "gyro binary '$1' not found or not executable"

# --- tools: fail loudly, never skip -----------------------------------------
INSTALL_HINT="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y freediameterd freediameter-extensions"
FDD=$(command -v freeDiameterd) || fatal "freeDiameterd not found; install it with: $INSTALL_HINT"
if [ -z "${FD_EXT_DIR:-}" ]; then
    for d in /usr/lib/freeDiameter /usr/lib/*-linux-gnu/freeDiameter /usr/local/lib/freeDiameter; do
        [ -f "$d/dbg_msg_dumps.fdx" ] && { FD_EXT_DIR=$d; break; }
    done
fi
for ext in dbg_msg_dumps dict_nasreq dict_dcca dict_dcca_3gpp; do
    [ -f "${FD_EXT_DIR:-/nonexistent}/$ext.fdx" ] \
        || fatal "freeDiameter extension $ext.fdx not found (FD_EXT_DIR=${FD_EXT_DIR:-unset}); install it with: $INSTALL_HINT"
done
command -v timeout >/dev/null 2>&1 || fatal "coreutils 'timeout' not found"
CAPTURE=1
if [ -n "${FD_NO_CAPTURE:-}" ]; then
    CAPTURE=0
elif ! command -v tshark >/dev/null 2>&1; then
    CAPTURE=0
    echo "$ME: note: tshark not installed, no capture (apt-get install -y tshark to add one)"
fi

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }
port_open && fatal "something already listens on $HOST:$PORT; stop it first"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gyro-fd-interop.XXXXXX")
GYRO_PID=""
FD_PID=""
TSHARK_PID=""
passes=0
failures=()
pass() { passes=$((passes + 1)); echo "PASS $*"; }
fail_step() { failures+=("$1"); echo "FAIL $1"; }
budget() { # abort when the 60 s budget is gone
    [ $SECONDS -lt 60 ] || fatal "60 s budget exceeded ($*)"
}

stop_pid() { # stop_pid PID SIGNAL SECONDS -> waits, then SIGKILL
    local pid=$1 sig=$2 secs=$3 end
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null
    end=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    local rc=$?
    stop_pid "$FD_PID" TERM 5
    stop_pid "$GYRO_PID" KILL 2
    stop_pid "$TSHARK_PID" INT 5
    if [ -n "${INTEROP_OUT:-}" ]; then
        mkdir -p "$INTEROP_OUT" && cp -f "$TMP"/*.log "$TMP"/*.pcap "$TMP"/*.conf "$TMP"/*.toml "$INTEROP_OUT"/ 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ -z "${KEEP_TMP:-}" ]; then
        rm -rf "$TMP"
    else
        echo "$ME: logs kept in $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- configs ------------------------------------------------------------------
cat >"$TMP/gyro.toml" <<EOF
[diameter]
listen = "$HOST:$PORT"
watchdog_interval_ms = 6000

# Journaled, as in production (and without the in-memory warning the log check would flag).
[journal]
dir = "$TMP/data"

[log]
level = "debug"
EOF

cat >"$TMP/fd.conf" <<EOF
# freeDiameter 1.2.1 client peer of gyro (generated by $ME)
Identity = "$FD_ID";
Realm = "$FD_REALM";
# no server socket at all (Port 0, SecPort 0): a pure client
Port = 0;
SecPort = 0;
No_SCTP;
No_IPv6;
Prefer_TCP;
TcTimer = 5;
TwTimer = 6;
# no TLS_Cred / TLS_CA: TLS is disabled, no certificate needed
LoadExtension = "$FD_EXT_DIR/dbg_msg_dumps.fdx" : "0x8888";
LoadExtension = "$FD_EXT_DIR/dict_nasreq.fdx";
LoadExtension = "$FD_EXT_DIR/dict_dcca.fdx";
LoadExtension = "$FD_EXT_DIR/dict_dcca_3gpp.fdx";
ConnectPeer = "$GYRO_ID" { ConnectTo = "$HOST"; No_TLS; No_SCTP; Port = $PORT; };
EOF

# --- helpers over the logs ------------------------------------------------------
nocolor() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }

# fd_events LOG: one line per message freeDiameter sent/received:
#   HH:MM:SS RCV|SND Command-Name RESULT-CODE|-
fd_events() {
    awk '
    function flush() {
        if (dir != "" && name != "") print t, dir, name, (rc == "" ? "-" : rc)
        dir = ""; name = ""; rc = ""
    }
    /^[0-9:]+ +NOTI   (RCV from|SND to) \047/ {
        flush(); t = $1; dir = ($0 ~ /RCV from/) ? "RCV" : "SND"; next
    }
    /^[0-9:]+ +(NOTI   [^ ]|DBG|ERROR|FATAL|ANNOY|INFO)/ { flush(); next }
    dir != "" && name == "" && /^[0-9:]+ +NOTI +\047[A-Za-z-]+\047 *$/ {
        name = $0; sub(/^[^\047]*\047/, "", name); sub(/\047.*$/, "", name); next
    }
    dir != "" && rc == "" && /AVP: \047Result-Code\047\(268\)/ {
        s = $0; sub(/.*val=[^(]*\(/, "", s); sub(/ .*/, "", s); rc = s; next
    }
    END { flush() }' "$1"
}
has_event() { fd_events "$1" | grep -qE "^[0-9:]+ $2\$"; }
count_event() { fd_events "$1" | grep -cE "^[0-9:]+ $2\$"; }
fd_open() { grep -qE -e "-> 'STATE_OPEN'[[:space:]]+'$GYRO_ID'" "$1"; }

wait_for() { # wait_for SECONDS CMD...  (polls every 0.2 s)
    local end=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
}

start_fd() { # start_fd N
    FD_LOG="$TMP/freediameter-$1.log"
    (cd "$TMP" && exec "$FDD" -c "$TMP/fd.conf" -dd) >"$FD_LOG" 2>&1 &
    FD_PID=$!
}
gyro_opens() { nocolor "$TMP/gyro.log" | grep -cE "peer open.*peer=\"?$FD_ID\"?( |\$)"; }
gyro_open_n() { [ "$(gyro_opens)" -ge "$1" ]; }

# --- capture ----------------------------------------------------------------------
PCAP="$TMP/capture.pcap"
if [ "$CAPTURE" -eq 1 ]; then
    tshark -n -i lo -f "tcp port $PORT" -w "$PCAP" -q >"$TMP/tshark-capture.log" 2>&1 &
    TSHARK_PID=$!
    end=$((SECONDS + 10))
    until [ -s "$PCAP" ] && grep -q "Capturing on" "$TMP/tshark-capture.log"; do
        if ! kill -0 "$TSHARK_PID" 2>/dev/null; then
            cat "$TMP/tshark-capture.log"; TSHARK_PID=""
            fatal "tshark capture on lo did not start (need root or CAP_NET_RAW; FD_NO_CAPTURE=1 to run without)"
        fi
        [ $SECONDS -lt $end ] || { cat "$TMP/tshark-capture.log"; fatal "tshark capture did not start within 10 s"; }
        sleep 0.2
    done
    sleep 0.3
fi

# --- 1. gyro ------------------------------------------------------------------------
echo "$ME: $("$FDD" --version 2>/dev/null | head -1), extensions from $FD_EXT_DIR"
echo "$ME: starting $GYRO serve --config gyro.toml (cwd $TMP)"
(cd "$TMP" && NO_COLOR=1 exec "$GYRO" serve --config "$TMP/gyro.toml") >"$TMP/gyro.log" 2>&1 &
GYRO_PID=$!
end=$((SECONDS + 15))
until port_open; do
    if ! kill -0 "$GYRO_PID" 2>/dev/null; then
        wait "$GYRO_PID"; st=$?; GYRO_PID=""
        echo "--- gyro.log"; nocolor "$TMP/gyro.log" | tail -n 30
        fatal "gyro exited with status $st before listening on $HOST:$PORT"
    fi
    [ $SECONDS -lt $end ] || { nocolor "$TMP/gyro.log" | tail -n 30; fatal "gyro did not accept on $HOST:$PORT within 15 s"; }
    sleep 0.2
done
pass "gyro (pid $GYRO_PID) accepts on $HOST:$PORT"

# --- 2. freeDiameterd #1: open, then freeDiameter-initiated DPR ------------------------
start_fd 1
FD1_LOG=$FD_LOG
if wait_for 10 fd_open "$FD1_LOG" && wait_for 3 gyro_open_n 1; then
    pass "fD #1: CER/CEA -> freeDiameter STATE_OPEN with $GYRO_ID, gyro 'peer open' for $FD_ID"
else
    fail_step "fD #1: connection to gyro not OPEN on both sides within 10 s"
fi
stop_pid "$FD_PID" TERM 10; FD_PID=""
if has_event "$FD1_LOG" "SND Disconnect-Peer-Request -" && has_event "$FD1_LOG" "RCV Disconnect-Peer-Answer 2001"; then
    pass "fD #1 SIGTERM: freeDiameter DPR -> gyro DPA 2001"
else
    fail_step "fD #1 SIGTERM: no DPR/DPA 2001 exchange in $(basename "$FD1_LOG")"
fi
budget "after fD #1"

# --- 3. freeDiameterd #2: reconnect with the same identity ------------------------------
start_fd 2
FD2_LOG=$FD_LOG
if wait_for 10 fd_open "$FD2_LOG" && wait_for 3 gyro_open_n 2; then
    pass "fD #2: reconnect after DPR -> STATE_OPEN, gyro 'peer open' again"
    opened=1
else
    fail_step "fD #2: reconnection not OPEN on both sides within 10 s"
    opened=0
fi

# --- 4. watchdog ---------------------------------------------------------------------------
gyro_dw() { has_event "$FD2_LOG" "RCV Device-Watchdog-Request -" && has_event "$FD2_LOG" "SND Device-Watchdog-Answer 2001"; }
fd_dw() { has_event "$FD2_LOG" "SND Device-Watchdog-Request -" && has_event "$FD2_LOG" "RCV Device-Watchdog-Answer 2001"; }
both_dw() { gyro_dw && fd_dw; }
if [ "$opened" -eq 1 ]; then
    echo "$ME: waiting up to 20 s for watchdog exchanges (Tw 6 s +- 2 s on both sides)"
    wait_for 20 both_dw
    dirs=()
    gyro_dw && dirs+=("gyro DWR -> fD DWA 2001 (x$(count_event "$FD2_LOG" "SND Device-Watchdog-Answer 2001"))")
    fd_dw && dirs+=("fD DWR -> gyro DWA 2001 (x$(count_event "$FD2_LOG" "RCV Device-Watchdog-Answer 2001"))")
    if [ ${#dirs[@]} -gt 0 ]; then
        pass "watchdog: ${dirs[0]}${dirs[1]:+; ${dirs[1]}}"
    else
        fail_step "watchdog: no DWR/DWA 2001 exchange within 20 s of OPEN"
    fi
fi
budget "after watchdog"

# --- 5. SIGTERM to gyro ----------------------------------------------------------------------
echo "$ME: SIGTERM to gyro (pid $GYRO_PID)"
kill -TERM "$GYRO_PID"
end=$((SECONDS + 10))
while kill -0 "$GYRO_PID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
if kill -0 "$GYRO_PID" 2>/dev/null; then
    fail_step "gyro still running 10 s after SIGTERM (killed)"
    stop_pid "$GYRO_PID" KILL 2
else
    wait "$GYRO_PID"; st=$?
    if [ "$st" -eq 0 ]; then pass "gyro exited 0 after SIGTERM"; else fail_step "gyro exited with status $st after SIGTERM (want 0)"; fi
fi
GYRO_PID=""
dpr_dpa() { has_event "$FD2_LOG" "RCV Disconnect-Peer-Request -" && has_event "$FD2_LOG" "SND Disconnect-Peer-Answer 2001"; }
if wait_for 3 dpr_dpa; then
    cause=$(grep -m1 "AVP: 'Disconnect-Cause'" "$FD2_LOG" | sed -n "s/.*val=//p")
    pass "gyro SIGTERM: gyro DPR (Disconnect-Cause $cause) -> freeDiameter DPA 2001"
else
    fail_step "gyro SIGTERM: no gyro DPR / freeDiameter DPA 2001 in $(basename "$FD2_LOG")"
fi
grep -qE -e "'STATE_OPEN'[[:space:]]+-> 'STATE_CLOSING'[[:space:]]+'$GYRO_ID'" "$FD2_LOG" \
    || fail_step "freeDiameter did not go STATE_OPEN -> STATE_CLOSING on gyro's DPR"
stop_pid "$FD_PID" TERM 10; FD_PID=""
stop_pid "$TSHARK_PID" INT 5; TSHARK_PID=""

# --- 6. logs and capture ------------------------------------------------------------------------
# freeDiameter: ERROR (incl. dbg_msg_dumps PARSING ERROR / DROPPED) or FATAL
# other than its own shutdown notice, and CONNECT FAILED, are interop problems.
bad_fd=$(cat "$FD1_LOG" "$FD2_LOG" | grep -E '^[0-9:]+ +(ERROR|FATAL)|CONNECT FAILED' \
    | grep -v 'Initiating freeDiameter shutdown sequence')
if [ -z "$bad_fd" ]; then
    pass "freeDiameter logs: no ERROR / DROPPED / PARSING ERROR / CONNECT FAILED"
else
    fail_step "freeDiameter logged errors:"; echo "$bad_fd" | head -n 40 | sed 's/^/    /'
fi
bad_gyro=$(nocolor "$TMP/gyro.log" | grep -E ' (WARN|ERROR) ' | grep -vE "$GYRO_WARN_ALLOW")
if [ -z "$bad_gyro" ]; then
    pass "gyro log: no unexpected WARN/ERROR"
else
    fail_step "gyro logged unexpected WARN/ERROR:"; echo "$bad_gyro" | head -n 40 | sed 's/^/    /'
fi

if [ "$CAPTURE" -eq 1 ]; then
    echo "$ME: capture: Device-Watchdog messages (diameter.cmd.code==280):"
    tshark -n -r "$PCAP" -d "tcp.port==$PORT,diameter" -Y 'diameter.cmd.code==280' \
        -T fields -e frame.time_relative -e tcp.srcport -e diameter.flags.request -e diameter.Result-Code 2>/dev/null \
        | awk -v p="$PORT" '{ from = ($2 == p) ? "gyro" : "fD  "; printf "    %8.3f s  %s %s %s\n", $1, from, ($3 == 1 || $3 == "True") ? "DWR" : "DWA", $4 }'
    if DIAMETER_PORT=$PORT bash "$HERE/tshark_check.sh" "$PCAP" 2>&1 | tee "$TMP/tshark_check.log"; then
        pass "tshark_check.sh on the capture"
    else
        fail_step "tshark_check.sh on the capture"
    fi
fi

echo "--- what freeDiameter received as CEA from gyro (fD #2):"
awk '/RCV from/ { blk = 1; n = 0 } blk { print; n++ } blk && /Firmware-Revision|^[0-9:]+ +(DBG|ERROR)/ { exit } n > 30 { exit }' "$FD2_LOG" \
    | sed -n '1,30p' | sed 's/^/    /'

if [ ${#failures[@]} -ne 0 ]; then
    echo "--- gyro.log (tail)"; nocolor "$TMP/gyro.log" | tail -n 30
    echo "$ME: FAIL (${#failures[@]}): ${failures[*]}"
    echo "freediameter: $passes passed, ${#failures[@]} failed"
    exit 1
fi
echo "$ME: OK (${SECONDS} s)"
echo "freediameter: $passes passed, 0 failed"
