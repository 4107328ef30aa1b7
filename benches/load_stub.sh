#!/usr/bin/env bash
# benches/load_stub.sh: a stand-in for `gyro load`, to test benches/load.sh without it.
#
#   GYRO_LOAD_CMD=benches/load_stub.sh benches/load.sh --quick
#
# It accepts exactly the command line `gyro load` is specified with (and refuses anything
# else, so the script's arguments are checked), sends one real CCR-I to the server with
# `gyro ccr` (so the servers the script starts are checked to answer), and prints a made-up
# JSON report of the agreed shape. The numbers are random, not measurements; a server that
# refuses an unknown subscriber (gyro, not echo) gets a lower rate, so the table shows ratios
# below 1.
#
#   provision --subscribers N --out FILE   copies the demo catalog to FILE (N is not honoured)
#
# Environment: GYRO_BIN (set by load.sh) is the gyro binary for `gyro ccr`; STUB_SLEEP makes a
# run take that many seconds.

set -euo pipefail

fail() {
    echo "load_stub: $*" >&2
    exit 2
}
number() { [[ $2 =~ ^[0-9]+$ ]] || fail "$1 needs a whole number, got '$2'"; }

if [[ ${1:-} == provision ]]; then
    shift
    subscribers="" out=""
    while [[ $# -gt 0 ]]; do
        case $1 in
            --subscribers) number "$1" "${2:-}"; subscribers=$2; shift ;;
            --out) out=${2:-}; shift ;;
            *) fail "provision: unknown option '$1'" ;;
        esac
        shift
    done
    [[ -n $subscribers && -n $out ]] || fail "provision needs --subscribers and --out"
    cp "$(dirname "$0")/../src/catalog/demo.toml" "$out"
    echo "load_stub: provision: wrote the demo catalog to $out (not $subscribers subscribers)" >&2
    exit 0
fi

server="" scenario=data connections=1 in_flight="" rate="" duration="" warmup="" json=0 only_updates=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --server) server=${2:-}; shift ;;
        --scenario)
            [[ ${2:-} =~ ^(data|voice|sms|mix)$ ]] || fail "--scenario must be data, voice, sms or mix"
            scenario=$2
            shift
            ;;
        --subscribers | --sessions) number "$1" "${2:-}"; shift ;;
        --only-updates) only_updates=1 ;;
        --connections) number "$1" "${2:-}"; connections=$2; shift ;;
        --in-flight) number "$1" "${2:-}"; in_flight=$2; shift ;;
        --rate) number "$1" "${2:-}"; rate=$2; shift ;;
        --duration) number "$1" "${2:-}"; duration=$2; shift ;;
        --warmup) number "$1" "${2:-}"; warmup=$2; shift ;;
        --json) json=1 ;;
        --workers) number "$1" "${2:-}"; shift ;;
        *) fail "unknown option '$1'" ;;
    esac
    shift
done
[[ -n $server ]] || fail "--server is required"
[[ -n $in_flight && -n $rate ]] && fail "--in-flight and --rate exclude each other"
[[ -n $duration && -n $warmup && $json == 1 ]] || fail "load.sh always passes --duration, --warmup and --json"
[[ -n $in_flight || -n $rate ]] || in_flight=1

answer=$("${GYRO_BIN:?GYRO_BIN names the gyro binary}" ccr --server "$server" --type initial \
    --subscriber e164:491700000001 --context 32251@3gpp.org --rg 10 --requested 0 --expect 2001 2>&1) ||
    {
        echo "load_stub: the server at $server did not answer a CCR-I with 2001:" >&2
        echo "$answer" >&2
        exit 1
    }
# Echo grants anyone; gyro refuses a subscriber its catalog lacks (5030).
stranger=$("$GYRO_BIN" ccr --server "$server" --type initial --subscriber e164:999 --rg 10 --requested 0 2>&1) || true
speed=1.0
[[ $stranger == *"=== 2001"* ]] || speed=0.75
sleep "${STUB_SLEEP:-0}"

awk -v seed="$RANDOM" -v c="$connections" -v k="${in_flight:-0}" -v r="${rate:-0}" -v s="$speed" \
    -v d="$duration" -v u="$only_updates" -v sc="$scenario" 'BEGIN {
    srand(seed)
    rate = (r > 0) ? r * (0.97 + 0.03 * rand()) * (s < 1 && r > 20000 ? 0.8 : 1) : c * k * 2000 * s * (0.9 + 0.2 * rand())
    answers = int(rate * d)
    busy = (r > 20000 && s < 1) ? int(answers / 10) : 0
    p50 = 100 / s * (0.9 + 0.2 * rand())
    printf "{\"requests\": %d, \"answers\": %d, \"duration_s\": %d, \"rate\": %.1f, ", answers, answers, d, rate
    printf "\"latency_us\": {\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p999\": %d, \"max\": %d}, ", p50, p50 * 2, p50 * 4, p50 * 8, p50 * 20
    printf "\"result_codes\": {\"2001\": %d%s}, \"timeouts\": 0, \"protocol_errors\": 0, ", answers - busy, busy ? ", \"3004\": " busy : ""
    printf "\"scenario\": \"%s\", \"only_updates\": %s, \"stub\": true}\n", sc, u ? "true" : "false"
}'
