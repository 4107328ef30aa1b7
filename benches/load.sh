#!/usr/bin/env bash
# benches/load.sh: gyro against the echo responder on this machine, with `gyro load`.
#
# `gyro echo` is the same Diameter server as `gyro serve` (framing, CER/CEA, DWR/DPR,
# validation, connection handling) answering every CCR with a canned CCA: it is the ceiling of
# this machine and this load generator. Each workload runs echo and gyro interleaved (echo,
# gyro, echo, gyro, ...), a fresh server process per run on 127.0.0.1 with a port the kernel
# picks, and the table reports medians and gyro/echo ratios. Ratios are what to compare across
# machines: the development VMs are shared and noisy, so absolute rates move between runs
# minutes apart, while echo and gyro measured side by side move together.
#
# Every gyro figure is taken with the journal on, `fsync = "batch"` (the default), except the
# row marked fsync off. The journal directory is under $TMPDIR (or /tmp); the script prints its
# filesystem, because on tmpfs an fsync costs nothing.
#
# Workloads (issue 5):
#   W1      data CCR-U only, 16 connections x 1 in flight              target gyro/echo >= 0.80
#   W2      data CCR-U only, 4 connections x 16 in flight              target gyro/echo >= 0.70
#   W3      data sessions CCR-I/U/T 1:8:1, 4 x 16, 1 000 000 subscribers, 100 000 sessions
#                                                                      target gyro/echo >= 0.50
#   W4-25/50/75  open loop at 25/50/75 % of echo's median W2 rate, 4 connections, 100 000
#           sessions over 100 000 subscribers (one each)
#           target p99 gyro <= 2 x echo at 25 % and 50 %; at 50 % also p99 <= 5 ms, p99.9 <= 10 ms
#   W2-off  W2 with the journal's fsync off (gyro), for the cost of the fsync
#   W5      (--overload) 150 % of gyro's maximum (its best W2 rate, or W4's 2001 answers a second
#           if higher) for 60 s: answers, 3004s, timeouts, and
#           gyro's peak RSS (VmHWM) against its steady-state VmRSS at the end of the W4-75 runs
#           (the same number of sessions; the W2 runs without W4)
#
# Usage: benches/load.sh [--quick] [--overload] [--runs N] [--duration S] [--warmup S]
#                        [--workloads W1,W2,...] [--server-workers N] [--keep]
#
#   --quick           smoke run: 1 run per server, 3 s after 1 s of warm-up (W5: 10 s)
#   --overload        also run W5 (a minute more)
#   --runs N          runs per server and workload (default 3)
#   --duration S      measured seconds per run (default 10)
#   --warmup S        warm-up seconds per run, not measured (default 2)
#   --workloads LIST  a subset of W1,W2,W3,W4,W2-off (default all; W4 and W5 need W2)
#   --server-workers N  Tokio worker threads for echo and gyro alike (default: half the CPUs,
#                     at least 1); the load generator gets the other CPUs (at least 1). The
#                     generator and the server share this machine, so each gets its own cores
#                     rather than every process starting one thread per core and all of them
#                     preempting each other.
#   --keep            keep the temporary directory (configs, logs, JSON reports)
#
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (the binary is $CARGO_TARGET_DIR/release/gyro)
#   GYRO_LOAD_CMD     command to run instead of `gyro load` (e.g. benches/load_stub.sh, a stub
#                     that checks the arguments and prints made-up JSON, to test this script)
#   LOAD_SH_JSON      jq or python3: force the JSON tool (default: jq if installed)
#
# The script installs nothing; it stops with a message naming any missing tool.

set -euo pipefail

readonly TARGET_RATIO_W1=0.80
readonly TARGET_RATIO_W2=0.70
readonly TARGET_RATIO_W3=0.50
# W4: gyro's p99 at most this multiple of echo's (25 % and 50 % of echo's W2 rate).
readonly TARGET_W4_P99_FACTOR=2
# W4 at 50 %: absolute bounds, microseconds.
readonly TARGET_W4_P99_US=5000
readonly TARGET_W4_P999_US=10000
# W5 offers this share of gyro's best W2 rate.
readonly OVERLOAD_PERCENT=150
readonly SUBSCRIBERS_SMALL=10000
readonly SUBSCRIBERS_W3=1000000
readonly SESSIONS_W3=100000
# Open loop (W4, W5): a session has one request outstanding at a time, so the generator needs
# rate x latency sessions to keep its schedule; 100 000 cover 200 k/s at 500 ms. As many
# subscribers, one session each, as on a real network (a subscriber rarely has more than a
# couple of data sessions; ten per account would make every ledger operation walk ten holds).
readonly SESSIONS_OPEN_LOOP=100000
readonly SUBSCRIBERS_OPEN_LOOP=100000
# Longest wait for a server to listen (a 1 M-account catalog takes seconds to load) and to stop.
readonly START_TIMEOUT_S=300
readonly STOP_TIMEOUT_S=30
# Slack beyond warm-up + duration before a load run is killed as hung.
readonly LOAD_SLACK_S=120

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
    exit "${1:-0}"
}

die() {
    echo "load.sh: $*" >&2
    exit 1
}

runs=3
duration=10
warmup=2
overload_duration=60
overload=0
keep=0
workloads="W1,W2,W3,W4,W2-off"
duration_set=0
cpus=$(nproc)
server_workers=$((cpus / 2 > 0 ? cpus / 2 : 1))
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick)
            runs=1 warmup=1 overload_duration=10
            [[ $duration_set == 1 ]] || duration=3
            ;;
        --overload) overload=1 ;;
        --runs)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer, got '${2:-}'"
            runs=$2
            shift
            ;;
        --duration)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--duration needs whole seconds > 0, got '${2:-}'"
            duration=$2 duration_set=1
            shift
            ;;
        --warmup)
            [[ ${2:-} =~ ^[0-9]+$ ]] || die "--warmup needs whole seconds, got '${2:-}'"
            warmup=$2
            shift
            ;;
        --workloads)
            [[ ${2:-} =~ ^(W1|W2|W3|W4|W2-off)(,(W1|W2|W3|W4|W2-off))*$ ]] ||
                die "--workloads takes a comma-separated list of W1 W2 W3 W4 W2-off, got '${2:-}'"
            workloads=$2
            shift
            ;;
        --server-workers)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--server-workers needs a positive integer, got '${2:-}'"
            server_workers=$2
            shift
            ;;
        --keep) keep=1 ;;
        -h | --help) usage 0 ;;
        *)
            echo "load.sh: unknown option '$1'" >&2
            usage 2
            ;;
    esac
    shift
done
[[ $overload == 1 ]] && workloads="$workloads,W5"

load_workers=$((cpus - server_workers > 0 ? cpus - server_workers : 1))

selected() { [[ ",$workloads," == *",$1,"* ]]; }
if selected W4 || selected W5; then
    selected W2 || die "W4 and W5 take their rates from W2; add W2 to --workloads"
fi

# --- Tools -------------------------------------------------------------------------------------

for tool in cargo awk sed grep sort timeout mktemp uname nproc; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required and not installed"
done
json_tool=${LOAD_SH_JSON:-}
if [[ -z $json_tool ]]; then
    if command -v jq >/dev/null 2>&1; then json_tool=jq; else json_tool=python3; fi
fi
case $json_tool in
    jq | python3) command -v "$json_tool" >/dev/null 2>&1 || die "'$json_tool' is required (JSON) and not installed" ;;
    *) die "LOAD_SH_JSON must be jq or python3, got '$json_tool'" ;;
esac

# jget FILE KEY...: the value at that path, empty if absent or null.
jget() {
    local file=$1
    shift
    if [[ $json_tool == jq ]]; then
        jq -r 'getpath($ARGS.positional) // empty' "$file" --args "$@"
    else
        python3 - "$file" "$@" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)
PY
    fi
}

# jcheck FILE: whether the file is a load report (an object with rate and latency_us).
jcheck() {
    # jq -e succeeds on an empty file (no output, no error), so emptiness is checked first.
    [[ -s $1 ]] || return 1
    if [[ $json_tool == jq ]]; then
        jq -e 'type == "object" and has("rate") and has("latency_us")' "$1" >/dev/null 2>&1
    else
        python3 - "$1" <<'PY' 2>/dev/null
import json, sys
v = json.load(open(sys.argv[1]))
sys.exit(0 if isinstance(v, dict) and "rate" in v and "latency_us" in v else 1)
PY
    fi
}

# jnot2001 FILE: answers whose Result-Code was not 2001.
jnot2001() {
    if [[ $json_tool == jq ]]; then
        jq -r '[(.result_codes // {}) | to_entries[] | select(.key != "2001") | .value] | add // 0' "$1"
    else
        python3 - "$1" <<'PY'
import json, sys
codes = json.load(open(sys.argv[1])).get("result_codes") or {}
print(sum(v for k, v in codes.items() if k != "2001"))
PY
    fi
}

# --- Build, provision, configure ---------------------------------------------------------------

repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
gyro=$target_dir/release/gyro

per_run=$((warmup + duration))
n_w=0
for w in W1 W2 W3 W2-off; do selected "$w" && n_w=$((n_w + 1)); done
selected W4 && n_w=$((n_w + 3))
# Server start and stop add a few seconds a run; W3's gyro loads a 1 M-account catalog.
estimate=$((n_w * 2 * runs * (per_run + 3)))
selected W3 && estimate=$((estimate + runs * 15))
[[ $overload == 1 ]] && estimate=$((estimate + warmup + overload_duration + 5))
echo "load.sh: $n_w workload rows x $runs run(s) x echo+gyro, ${warmup}s warm-up + ${duration}s each$([[ $overload == 1 ]] && echo ", W5 ${overload_duration}s")"
echo "load.sh: estimated runtime $((estimate / 60)) min $((estimate % 60)) s, plus the build and provisioning"

work=$(mktemp -d "${TMPDIR:-/tmp}/gyro-load.XXXXXX")
server_pid=""
cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ $keep == 1 || $status != 0 ]]; then
        echo "load.sh: logs and reports kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$work/logs" "$work/reports" "$work/data"

echo "load.sh: cargo build --release --locked"
(cd "$repo" && cargo build --release --locked) || die "the release build failed"
[[ -x $gyro ]] || die "no gyro binary at $gyro after the build (CARGO_TARGET_DIR?)"

if [[ -n ${GYRO_LOAD_CMD:-} ]]; then
    read -r -a load_cmd <<<"$GYRO_LOAD_CMD"
    echo "load.sh: GYRO_LOAD_CMD: using '$GYRO_LOAD_CMD' as gyro load"
else
    load_cmd=("$gyro" load)
    "$gyro" load --help >/dev/null 2>&1 ||
        die "$gyro has no 'load' command (it comes with the load generator); build a tree that has it, or set GYRO_LOAD_CMD"
fi
export GYRO_BIN=$gyro # for GYRO_LOAD_CMD stubs that talk to the server

echo "load.sh: provisioning catalogs in $work"
"${load_cmd[@]}" provision --subscribers "$SUBSCRIBERS_SMALL" --out "$work/catalog-small.toml" \
    >"$work/logs/provision-small.log" 2>&1 || die "gyro load provision --subscribers $SUBSCRIBERS_SMALL failed:
$(tail -5 "$work/logs/provision-small.log")"
if selected W4 || selected W5; then
    "${load_cmd[@]}" provision --subscribers "$SUBSCRIBERS_OPEN_LOOP" --out "$work/catalog-open.toml" \
        >"$work/logs/provision-open.log" 2>&1 || die "gyro load provision --subscribers $SUBSCRIBERS_OPEN_LOOP failed:
$(tail -5 "$work/logs/provision-open.log")"
fi
if selected W3; then
    "${load_cmd[@]}" provision --subscribers "$SUBSCRIBERS_W3" --out "$work/catalog-w3.toml" \
        >"$work/logs/provision-w3.log" 2>&1 || die "gyro load provision --subscribers $SUBSCRIBERS_W3 failed:
$(tail -5 "$work/logs/provision-w3.log")"
fi

# write_config FILE CATALOG FSYNC: a gyro configuration (the journal dir comes per run).
write_config() {
    cat >"$1" <<EOF
# Written by benches/load.sh.
[diameter]
listen = "127.0.0.1:0"

[charging]
catalog = "$2"

[journal]
fsync = "$3"

[log]
level = "info"
EOF
}
write_config "$work/gyro-small.toml" "$work/catalog-small.toml" batch
write_config "$work/gyro-small-off.toml" "$work/catalog-small.toml" off
{ selected W4 || selected W5; } && write_config "$work/gyro-open.toml" "$work/catalog-open.toml" batch
selected W3 && write_config "$work/gyro-w3.toml" "$work/catalog-w3.toml" batch
# Echo gets the same [diameter] settings (identity, limits); it ignores [charging] and [journal].
echo_config=$work/gyro-small.toml

fs_type=$(stat -f -c %T "$work/data" 2>/dev/null || echo unknown)
echo "load.sh: journal directories under $work/data (filesystem: $fs_type)"
[[ $fs_type == tmpfs || $fs_type == ramfs ]] &&
    echo "load.sh: WARNING: $fs_type makes fsync free; set TMPDIR to a disk-backed directory for real figures" >&2

# --- Servers -----------------------------------------------------------------------------------

server_addr=""
# start_server KIND CONFIG LABEL: starts `gyro echo` or `gyro serve` and waits until it logs the
# address it listens on (it binds before logging, so the port accepts connections by then).
start_server() {
    local kind=$1 config=$2 label=$3 log=$work/logs/$3.log command
    case $kind in
        echo)
            command="gyro echo"
            NO_COLOR=1 "$gyro" echo --config "$config" --workers "$server_workers" >"$log" 2>&1 &
            ;;
        gyro)
            command="gyro serve"
            mkdir -p "$work/data/$label"
            NO_COLOR=1 "$gyro" serve --config "$config" --workers "$server_workers" --data-dir "$work/data/$label" \
                >"$log" 2>&1 &
            ;;
    esac
    server_pid=$!
    local waited=0 line
    while :; do
        line=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$log" | grep -m1 'gyro listening for Diameter' || true)
        if [[ -n $line ]]; then
            server_addr=$(sed -n 's/.*addr=\([^ ]*\).*/\1/p' <<<"$line")
            [[ -n $server_addr ]] || die "$label: cannot read the address from: $line"
            return
        fi
        kill -0 "$server_pid" 2>/dev/null || die "$label: $command exited before listening:
$(tail -20 "$log")"
        ((waited < START_TIMEOUT_S * 10)) || die "$label: $command did not listen within ${START_TIMEOUT_S}s:
$(tail -20 "$log")"
        sleep 0.1
        waited=$((waited + 1))
    done
}

# proc_kb FIELD: VmRSS or VmHWM of the running server, in kB.
proc_kb() {
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$server_pid/status" 2>/dev/null || true
}

# stop_server LABEL: SIGTERM (graceful: DPR, drain), SIGKILL after STOP_TIMEOUT_S.
stop_server() {
    local label=$1 waited=0 status=0
    kill -TERM "$server_pid" 2>/dev/null || true
    while kill -0 "$server_pid" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "load.sh: $label: no exit ${STOP_TIMEOUT_S}s after SIGTERM; SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || status=$?
    [[ $status == 0 ]] || echo "load.sh: $label: server exit status $status (log: $work/logs/$label.log)" >&2
    server_pid=""
    rm -rf "${work:?}/data/$label"
}

# run_one ROW KIND CONFIG RUN DURATION LOAD-ARGS...: one fresh server, one load run; the report
# goes to reports/ROW-KIND-RUN.json, the server's memory at the end to ROW-KIND-RUN.mem.
run_one() {
    local row=$1 kind=$2 config=$3 run=$4 dur=$5
    shift 5
    local label=$row-$kind-$run
    local report=$work/reports/$label.json err=$work/logs/$label.load.log status=0
    start_server "$kind" "$config" "$label"
    printf 'load.sh: %-7s %-4s run %d/%d on %s ... ' "$row" "$kind" "$run" "$runs" "$server_addr"
    timeout --foreground --signal=TERM $((warmup + dur + LOAD_SLACK_S)) "${load_cmd[@]}" --server "$server_addr" "$@" \
        --workers "$load_workers" --duration "$dur" --warmup "$warmup" --json >"$report" 2>"$err" || status=$?
    echo "$(proc_kb VmRSS) $(proc_kb VmHWM)" >"$work/reports/$label.mem"
    stop_server "$label"
    if ! jcheck "$report"; then
        echo "failed"
        die "$label: gyro load (exit $status) wrote no report:
$(tail -20 "$err")
server log: $work/logs/$label.log"
    fi
    [[ $status == 0 ]] || echo -n "(gyro load exit $status, report kept) "
    echo "rate $(jget "$report" rate)/s p99 $(jget "$report" latency_us p99) us"
}

# run_row ROW GYRO-CONFIG LOAD-ARGS...: echo and gyro interleaved, `runs` times each.
run_row() {
    local row=$1 config=$2 run
    shift 2
    for ((run = 1; run <= runs; run++)); do
        run_one "$row" echo "$echo_config" "$run" "$duration" "$@"
        run_one "$row" gyro "$config" "$run" "$duration" "$@"
    done
}

# --- Statistics --------------------------------------------------------------------------------

median() {
    printf '%s\n' "$@" | grep -v '^$' | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# values ROW KIND KEY...: one value per run.
values() {
    local row=$1 kind=$2 run
    shift 2
    for ((run = 1; run <= runs; run++)); do
        jget "$work/reports/$row-$kind-$run.json" "$@"
    done
}

med() { median $(values "$@"); }

# problems ROW KIND: not-2001 answers, timeouts and protocol errors summed over the runs.
problems() {
    local row=$1 kind=$2 run f n=0 t=0 p=0
    for ((run = 1; run <= runs; run++)); do
        f=$work/reports/$row-$kind-$run.json
        n=$((n + $(jnot2001 "$f")))
        t=$((t + $(jget "$f" timeouts || true) + 0))
        p=$((p + $(jget "$f" protocol_errors || true) + 0))
    done
    echo "$n/$t/$p"
}

# --- Workloads ---------------------------------------------------------------------------------

small=(--subscribers "$SUBSCRIBERS_SMALL")
updates=(--scenario data --only-updates "${small[@]}")
open_loop=(--scenario data --only-updates --subscribers "$SUBSCRIBERS_OPEN_LOOP")

selected W1 && run_row W1 "$work/gyro-small.toml" "${updates[@]}" --connections 16 --in-flight 1
selected W2 && run_row W2 "$work/gyro-small.toml" "${updates[@]}" --connections 4 --in-flight 16
selected W3 && run_row W3 "$work/gyro-w3.toml" --scenario data --subscribers "$SUBSCRIBERS_W3" \
    --sessions "$SESSIONS_W3" --connections 4 --in-flight 16
if selected W4; then
    echo_w2=$(med W2 echo rate)
    for pct in 25 50 75; do
        rate=$(awk -v r="$echo_w2" -v p="$pct" 'BEGIN { printf "%d", r * p / 100 }')
        ((rate > 0)) || die "W4: echo's W2 rate ($echo_w2) gives no rate at $pct %"
        run_row "W4-$pct" "$work/gyro-open.toml" "${open_loop[@]}" --sessions "$SESSIONS_OPEN_LOOP" \
            --connections 4 --rate "$rate"
    done
fi
selected W2-off && run_row W2-off "$work/gyro-small-off.toml" "${updates[@]}" --connections 4 --in-flight 16
if selected W5; then
    # gyro's maximum: its best W2 rate (closed loop, bounded by in-flight / fsync) or, with W4,
    # the most 2001 answers a second it gave in an open-loop row (its CPU-bound capacity).
    gyro_max=$(
        values W2 gyro rate
        if selected W4; then
            for row in W4-25 W4-50 W4-75; do
                for ((run = 1; run <= runs; run++)); do
                    f=$work/reports/$row-gyro-$run.json
                    awk -v r="$(jget "$f" rate)" -v a="$(jget "$f" answers)" -v n="$(jnot2001 "$f")" \
                        'BEGIN { if (a > 0) printf "%d\n", r * (a - n) / a }'
                done
            done
        fi
    )
    gyro_max=$(sort -g <<<"$gyro_max" | tail -1)
    w5_rate=$(awk -v r="$gyro_max" -v p="$OVERLOAD_PERCENT" 'BEGIN { printf "%d", r * p / 100 }')
    echo "load.sh: W5 offers $w5_rate/s ($OVERLOAD_PERCENT % of gyro's maximum, $gyro_max/s 2001 answers) for ${overload_duration}s"
    saved_runs=$runs
    runs=1
    run_one W5 gyro "$work/gyro-open.toml" 1 "$overload_duration" "${open_loop[@]}" \
        --sessions "$SESSIONS_OPEN_LOOP" --connections 4 --rate "$w5_rate"
    runs=$saved_runs
fi

# --- Report ------------------------------------------------------------------------------------

# verdict EXPR: met or missed for an awk condition over the variables passed with -v.
verdict() {
    local cond=$1
    shift
    awk "$@" "BEGIN { print (($cond) ? \"met\" : \"MISSED\") }"
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
{
    echo
    echo "gyro vs gyro echo, medians of $runs run(s) each, ${warmup}s warm-up + ${duration}s per run"
    echo "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -srm); journal on $fs_type"
    echo "threads: server $server_workers Tokio worker(s) (+ gyro's journal writer), load generator $load_workers"
    echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with local changes)'), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "latencies in microseconds; errors = answers not 2001 / timeouts / protocol errors, summed over the runs"
    echo
    printf '%-7s %10s %10s %6s  %-20s %-20s %-13s %-13s %-40s %s\n' \
        workload echo/s gyro/s ratio "echo p50/p99/p99.9" "gyro p50/p99/p99.9" "echo errors" "gyro errors" target verdict
    for row in W1 W2 W3 W4-25 W4-50 W4-75 W2-off; do
        base=${row%%-[0-9]*}
        selected "$base" || continue
        er=$(med "$row" echo rate)
        gr=$(med "$row" gyro rate)
        ratio=$(awk -v g="$gr" -v e="$er" 'BEGIN { printf "%.2f", (e > 0) ? g / e : 0 }')
        e50=$(med "$row" echo latency_us p50) e99=$(med "$row" echo latency_us p99) e999=$(med "$row" echo latency_us p999)
        g50=$(med "$row" gyro latency_us p50) g99=$(med "$row" gyro latency_us p99) g999=$(med "$row" gyro latency_us p999)
        case $row in
            W1 | W2 | W3)
                var=TARGET_RATIO_$row
                target="gyro/echo >= ${!var}"
                result=$(verdict "r >= t" -v r="$ratio" -v t="${!var}")
                ;;
            W4-25)
                target="p99 gyro <= ${TARGET_W4_P99_FACTOR} x echo"
                result=$(verdict "g <= f * e" -v g="$g99" -v e="$e99" -v f="$TARGET_W4_P99_FACTOR")
                ;;
            W4-50)
                target="p99 <= ${TARGET_W4_P99_FACTOR}x echo, <= $((TARGET_W4_P99_US / 1000)) ms; p99.9 <= $((TARGET_W4_P999_US / 1000)) ms"
                result=$(verdict "g <= f * e && g <= p && g9 <= p9" -v g="$g99" -v e="$e99" \
                    -v f="$TARGET_W4_P99_FACTOR" -v p="$TARGET_W4_P99_US" -v g9="$g999" -v p9="$TARGET_W4_P999_US")
                ;;
            *) target="-" result="-" ;;
        esac
        printf '%-7s %10.0f %10.0f %6s  %-20s %-20s %-13s %-13s %-40s %s\n' "$row" "$er" "$gr" "$ratio" \
            "$(printf '%.0f/%.0f/%.0f' "$e50" "$e99" "$e999")" "$(printf '%.0f/%.0f/%.0f' "$g50" "$g99" "$g999")" \
            "$(problems "$row" echo)" "$(problems "$row" gyro)" "$target" "$result"
    done
    # The journal's own figures from gyro's log at shutdown: what bounds a closed loop with
    # fsync on is in-flight / (fsync + the rest of a round trip), since no answer leaves before
    # its batch is synced.
    echo
    echo "gyro's journal (medians over the runs): records per batch, mean and max fdatasync"
    for row in W1 W2 W3 W4-25 W4-50 W4-75 W2-off; do
        base=${row%%-[0-9]*}
        selected "$base" || continue
        jfield() {
            median $(for ((run = 1; run <= runs; run++)); do
                sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$work/logs/$row-gyro-$run.log" 2>/dev/null |
                    grep 'journal closed' | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"
            done)
        }
        printf '  %-7s %8s records/batch  fsync mean %6s us  max %8s us\n' "$row" \
            "$(jfield mean_batch_records)" "$(jfield mean_sync_us)" "$(jfield max_sync_us)"
    done
    if selected W5; then
        f=$work/reports/W5-gyro-1.json
        read -r w5_rss w5_hwm <"$work/reports/W5-gyro-1.mem" || true
        # Steady state with as many sessions as W5 has: the W4-75 runs; without W4, the W2 runs.
        steady_row=W2
        selected W4 && steady_row=W4-75
        steady=$(median $(for ((run = 1; run <= runs; run++)); do awk '{ print $1 }' "$work/reports/$steady_row-gyro-$run.mem"; done))
        w5_req=$(jget "$f" requests) w5_ans=$(jget "$f" answers) w5_to=$(jget "$f" timeouts)
        echo
        echo "W5 overload: offered $w5_rate/s for ${overload_duration}s against gyro ($OVERLOAD_PERCENT % of its maximum, $gyro_max/s: best of W2 and W4's 2001 answers)"
        echo "  requests $(jget "$f" requests), answers $(jget "$f" answers) ($(jget "$f" rate)/s), 3004 TOO_BUSY $(jget "$f" result_codes 3004 | grep . || echo 0), timeouts $(jget "$f" timeouts), protocol errors $(jget "$f" protocol_errors)"
        echo "  latency p50/p99/p99.9/max: $(jget "$f" latency_us p50)/$(jget "$f" latency_us p99)/$(jget "$f" latency_us p999)/$(jget "$f" latency_us max) us"
        echo "  due but not sent by the generator: $(jget "$f" unsent | grep . || echo 0) (it had no free session or no CPU)"
        echo "  gyro memory: peak VmHWM ${w5_hwm:-?} kB, VmRSS ${w5_rss:-?} kB at the end of W5; steady state (median VmRSS at the end of the $steady_row runs) ${steady:-?} kB"
        echo "  targets: every request answered, none timed out: $(verdict "r == a && t == 0" -v r="${w5_req:-0}" -v a="${w5_ans:--1}" -v t="${w5_to:-1}"); peak memory <= 1.2 x steady: $(verdict "h > 0 && s > 0 && h <= 1.2 * s" -v h="${w5_hwm:-0}" -v s="${steady:-0}")"
    fi
} | tee "$work/summary.txt"
