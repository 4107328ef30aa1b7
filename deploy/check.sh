#!/usr/bin/env bash
# Checks every file under deploy/. Run from the repository root:  bash deploy/check.sh
#
# It installs what it lacks (promtool from the Debian package `prometheus`, systemd-analyze
# from `systemd`, kubectl from `kubectl` or `kubernetes-client`, PyYAML and
# kubernetes-validate with pip). A tool that is still missing afterwards is a failure, never a
# skipped check. Note: on a host where systemd runs, installing the `prometheus` package also
# enables and starts a Prometheus service; run this in a container or CI job.
#
# What is checked:
#   1. Prometheus: promtool check config / check rules / test rules (the alert unit tests).
#   2. Every YAML file under deploy/ parses (all documents).
#   3. Kubernetes: each manifest has apiVersion, kind, metadata.name and no namespace;
#      kustomization.yaml lists every manifest but the example Secret; `kubectl kustomize`
#      renders it; kubernetes-validate --strict checks it against the Kubernetes schemas;
#      references agree (Service selectors and the pod's labels, named ports, probes,
#      volumes, ConfigMap and Secret names, the ServiceMonitor's selector and port, uid 10001).
#   4. gyro configs: deploy/gyro.toml and deploy/docker/gyro.toml parse as TOML and use only
#      known sections and keys; the ConfigMap holds exactly deploy/docker/gyro.toml; the admin
#      token paths agree with the systemd unit and the StatefulSet's Secret mount.
#   5. Grafana: the dashboard is valid JSON, uses the ${DS_PROMETHEUS} data source, and every
#      expression parses (promtool, as recording rules) and names only gyro's metrics (the
#      list below). The alert rules and their tests are held to the same metric list.
#   6. Dockerfile: the multi-stage layout, non-root uid 10001, ports, volume, entrypoint.
#   7. systemd: systemd-analyze verify on the unit, and systemd-analyze security --offline
#      with an exposure threshold of 2.0 (--threshold=20, the scale is 0..100), so a hardening option cannot silently go.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f Cargo.toml && -d deploy ]] || { echo "FAIL: run from the gyro repository" >&2; exit 1; }

# The metrics gyro exposes (src/ is the truth; keep this list in step with it). Histograms
# are listed by their base name; _bucket, _sum and _count are accepted for them.
METRICS=(
  gyro_diameter_requests_total
  gyro_diameter_peers
  gyro_diameter_peer_up
  gyro_sessions_open
  gyro_reservations_open
  gyro_reserved_money
  gyro_debited_money_total
  gyro_granted_time_seconds_total
  gyro_granted_volume_bytes_total
  gyro_granted_events_total
  gyro_duplicates_replayed_total
  gyro_overload_shed_total
  gyro_diameter_peer_connections_refused_total
  gyro_journal_written_bytes_total
  gyro_journal_records_total
  gyro_journal_failed
  gyro_diameter_connections
  gyro_requests_in_flight
  gyro_accounts
  gyro_settlement_queue_depth
  gyro_settlement_payment_attempts_total
  gyro_settlement_payments_total
  gyro_settlement_settled_total
  gyro_settlement_failures_total
  gyro_settlement_deliveries_deferred_total
  gyro_settlement_dropped_total
  gyro_settlement_dead_letters_total
  gyro_emails_sent_total
  gyro_emails_refused_total
  gyro_config_info
  gyro_reloads_total
  gyro_reload_last_success_timestamp_seconds
  gyro_build_info
  process_cpu_seconds_total
  process_resident_memory_bytes
  process_virtual_memory_bytes
  process_virtual_memory_max_bytes
  process_open_fds
  process_max_fds
  process_start_time_seconds
  process_threads
  up
)
HISTOGRAMS=(
  gyro_diameter_request_duration_seconds
  gyro_journal_batch_records
  gyro_journal_fsync_duration_seconds
)

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || fail "not root and no sudo: cannot install missing tools"
  SUDO=(sudo)
fi
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || fail "apt-get not found: install $* yourself"
  if [[ $APT_UPDATED -eq 0 ]]; then
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
pip_install() {
  python3 -m pip install -q "$@" || python3 -m pip install -q --user "$@" \
    || python3 -m pip install -q --break-system-packages "$@"
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- tools ------------------------------------------------------------------------------------
step "tools"
command -v python3 >/dev/null || apt_install python3 python3-pip
command -v python3 >/dev/null || fail "python3 missing after installing it"
python3 -c 'import tomllib' 2>/dev/null || fail "python3 >= 3.11 needed (tomllib); have $(python3 --version)"
if ! command -v promtool >/dev/null; then
  apt_install prometheus
  # Debian's package ships promtool with the server; make sure this one did.
  [[ -x /usr/bin/promtool ]] || fail "package prometheus did not provide /usr/bin/promtool"
fi
command -v promtool >/dev/null || fail "promtool missing"
if ! command -v systemd-analyze >/dev/null; then apt_install systemd; fi
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing after installing systemd"
if ! command -v kubectl >/dev/null; then apt_install kubectl || apt_install kubernetes-client; fi
command -v kubectl >/dev/null || fail "kubectl missing after installing kubectl/kubernetes-client"
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
python3 -c 'import yaml' || fail "PyYAML missing after pip install"
python3 -m kubernetes_validate --version >/dev/null 2>&1 || pip_install kubernetes-validate
python3 -m kubernetes_validate --version >/dev/null || fail "kubernetes-validate missing after pip install"
promtool --version 2>&1 | head -1
systemd-analyze --version | head -1
echo "kubectl $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "$(python3 --version), PyYAML $(python3 -c 'import yaml; print(yaml.__version__)'), kubernetes-validate $(python3 -m kubernetes_validate --version)"

# --- 1. Prometheus ----------------------------------------------------------------------------
step "prometheus: promtool check config, check rules, test rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

# --- 2..5: YAML, Kubernetes, configs, dashboard (Python) --------------------------------------
step "yaml, kubernetes, gyro configs, dashboard"
kubectl kustomize deploy/kubernetes >"$TMP/rendered.yaml"
# (Bash cannot export arrays: the lists go over as space-separated strings.)
export METRIC_NAMES="${METRICS[*]}" HISTOGRAM_NAMES="${HISTOGRAMS[*]}" TMP
python3 - <<'PY'
import json, os, pathlib, re, sys, tomllib
import yaml

TMP = pathlib.Path(os.environ["TMP"])
errors = []
def err(msg):
    errors.append(msg)
    print("  ERROR", msg)
def ok(msg):
    print("  ok   ", msg)

# 2. Every YAML file parses, all documents.
yamls = sorted(p for p in pathlib.Path("deploy").rglob("*") if p.suffix in (".yml", ".yaml"))
docs = {}
for p in yamls:
    try:
        docs[p] = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        ok(f"{p}: {len(docs[p])} YAML document(s)")
    except yaml.YAMLError as e:
        err(f"{p}: {e}")

# 3. Kubernetes manifests.
kdir = pathlib.Path("deploy/kubernetes")
manifests = {}
for p in sorted(kdir.glob("*.yaml")):
    if p.name == "kustomization.yaml":
        continue
    for d in docs.get(p, []):
        name = (d.get("metadata") or {}).get("name")
        if not (d.get("apiVersion") and d.get("kind") and name):
            err(f"{p}: a document lacks apiVersion, kind or metadata.name")
            continue
        if "namespace" in d["metadata"]:
            err(f"{p}: {d['kind']}/{name} sets a namespace; the manifests are namespace-less")
        manifests[(d["kind"], name)] = d
        ok(f"{p}: {d['apiVersion']} {d['kind']}/{name}")
kust = docs.get(kdir / "kustomization.yaml", [{}])[0]
listed = set(kust.get("resources", []))
for r in listed:
    if not (kdir / r).is_file():
        err(f"kustomization.yaml lists {r}, which does not exist")
for p in kdir.glob("*.yaml"):
    if p.name not in listed | {"kustomization.yaml", "secret.example.yaml"}:
        err(f"{p} is not listed in kustomization.yaml")
if "secret.example.yaml" in listed:
    err("kustomization.yaml must not apply secret.example.yaml (placeholder token)")
rendered = [d for d in yaml.safe_load_all((TMP / "rendered.yaml").read_text()) if d]
ok(f"kubectl kustomize: {len(rendered)} resources")

def get(kind, name):
    d = manifests.get((kind, name))
    if d is None:
        err(f"{kind}/{name} not found")
    return d or {}

sts = get("StatefulSet", "gyro")
spec = sts.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
(c,) = pod.get("containers", [{}])
if spec.get("replicas") != 1:
    err("StatefulSet gyro: replicas must be 1 (single-writer journal)")
if spec.get("selector", {}).get("matchLabels", {}).items() - pod_labels.items():
    err("StatefulSet gyro: selector does not match the pod's labels")
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
want = [(psc.get("runAsNonRoot"), True, "runAsNonRoot"), (psc.get("runAsUser"), 10001, "runAsUser"),
        (psc.get("fsGroup"), 10001, "fsGroup"),
        (psc.get("seccompProfile", {}).get("type"), "RuntimeDefault", "seccompProfile"),
        (csc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem"),
        (csc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation"),
        (csc.get("capabilities", {}).get("drop"), ["ALL"], "capabilities.drop")]
for have, exp, what in want:
    if have != exp:
        err(f"StatefulSet gyro: securityContext {what} is {have!r}, want {exp!r}")
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
if ports != {"diameter": 3868, "metrics": 9464}:
    err(f"container ports {ports}, want diameter 3868 and metrics 9464")
for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    g = c.get(probe, {}).get("httpGet", {})
    if g.get("path") != path or g.get("port") not in ports:
        err(f"{probe}: {g}, want {path} on a named container port")
vols = {v["name"]: v for v in pod.get("volumes", [])}
claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
for m in mounts:
    if m not in vols and m not in claims:
        err(f"volumeMount {m} has no volume or claim")
if mounts.get("data") != "/var/lib/gyro" or "data" not in claims:
    err("the journal volume (claim `data`) must be mounted on /var/lib/gyro")
cm_name = vols.get("config", {}).get("configMap", {}).get("name")
secret_name = vols.get("admin-token", {}).get("secret", {}).get("secretName")
cm = get("ConfigMap", cm_name)
secret = get("Secret", secret_name)
if "admin-token" not in secret.get("stringData", {}):
    err("the example Secret has no admin-token key")
if spec.get("serviceName") and ("Service", spec["serviceName"]) not in manifests:
    err(f"StatefulSet serviceName {spec['serviceName']} is no Service here")
for (kind, name), d in manifests.items():
    if kind != "Service":
        continue
    sel = d["spec"].get("selector", {})
    if sel.items() - pod_labels.items():
        err(f"Service/{name}: selector {sel} does not select the pod")
    for p in d["spec"]["ports"]:
        if p["targetPort"] not in ports:
            err(f"Service/{name}: targetPort {p['targetPort']} is no container port")
sm = get("ServiceMonitor", "gyro")
sm_sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
scraped = [n for (k, n), d in manifests.items()
           if k == "Service" and not (sm_sel.items() - d["metadata"].get("labels", {}).items())]
if len(scraped) != 1:
    err(f"ServiceMonitor selects Services {scraped}; want exactly one (no double scrape)")
else:
    svc_ports = {p["name"] for p in manifests[("Service", scraped[0])]["spec"]["ports"]}
    for e in sm["spec"]["endpoints"]:
        if e["port"] not in svc_ports or e.get("path", "/metrics") != "/metrics":
            err(f"ServiceMonitor endpoint {e} does not name Service/{scraped[0]}'s port")
ok("kubernetes cross-references checked")

# 4. gyro configs. Sections and keys of src/config.rs (plus [http], added in issue 7).
KEYS = {
    "diameter": {"listen", "origin_host", "origin_realm", "host_ip_addresses", "product_name",
                 "applications", "allowed_peers", "watchdog_interval_ms", "in_flight_per_connection",
                 "in_flight_max", "connections_max", "connections_per_peer_max", "message_size_max_bytes",
                 "dictionary_dir"},
    "charging": {"catalog", "tcc_grace_ms", "closed_retention_ms"},
    "journal": {"dir", "fsync", "segment_mib", "preallocate", "snapshot_interval_s", "snapshots_kept"},
    "log": {"level", "format"},
    "settlement": None,  # its own nested tables; left at defaults here
    "http": {"listen", "admin_token_file"},
}
def check_config(path, text, http_listen, token_file):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return err(f"{path}: {e}")
    for section, table in cfg.items():
        if section not in KEYS:
            err(f"{path}: unknown section [{section}]")
        elif KEYS[section] is not None:
            for k in set(table) - KEYS[section]:
                err(f"{path}: unknown key {section}.{k}")
    exp = {("diameter", "listen"): "0.0.0.0:3868", ("journal", "dir"): "/var/lib/gyro",
           ("journal", "fsync"): "batch", ("http", "listen"): http_listen,
           ("http", "admin_token_file"): token_file}
    for (s, k), v in exp.items():
        if cfg.get(s, {}).get(k) != v:
            err(f"{path}: {s}.{k} = {cfg.get(s, {}).get(k)!r}, want {v!r}")
    ok(f"{path}: TOML, known keys, listen/journal/http as expected")

unit = pathlib.Path("deploy/gyro.service").read_text()
m = re.search(r"^LoadCredential=([\w.-]+):", unit, re.M)
unit_token = f"/run/credentials/gyro.service/{m.group(1)}" if m else None
check_config("deploy/gyro.toml", pathlib.Path("deploy/gyro.toml").read_text(), "127.0.0.1:9464", unit_token)
container_toml = pathlib.Path("deploy/docker/gyro.toml").read_text()
secret_path = f"{mounts.get('admin-token')}/admin-token"
check_config("deploy/docker/gyro.toml", container_toml, "0.0.0.0:9464", secret_path)
if cm.get("data", {}).get("gyro.toml") != container_toml:
    err(f"ConfigMap/{cm_name} gyro.toml differs from deploy/docker/gyro.toml")
else:
    ok(f"ConfigMap/{cm_name} gyro.toml == deploy/docker/gyro.toml")

# 5. Metric names: the dashboard, the alert rules and the alert tests.
known = set(os.environ["METRIC_NAMES"].split())
for h in os.environ["HISTOGRAM_NAMES"].split():
    known |= {h + "_bucket", h + "_sum", h + "_count"}
def metric_names(expr):
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)    # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)               # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)              # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n.startswith(("gyro_", "process_")) or n == "up"}
def check_exprs(where, exprs):
    used = set()
    for e in exprs:
        names = metric_names(e)
        if not names:
            err(f"{where}: no gyro metric in `{e}`")
        for n in names - known:
            err(f"{where}: unknown metric {n} in `{e}`")
        used |= names
    ok(f"{where}: {len(exprs)} expressions, metrics known ({len(used)} distinct)")

rules = docs[pathlib.Path("deploy/prometheus/alerts.yml")][0]
check_exprs("alerts.yml", [r["expr"] for g in rules["groups"] for r in g["rules"]])
for r in (r for g in rules["groups"] for r in g["rules"]):
    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        err(f"alert {r['alert']}: no severity label")
    if not {"summary", "description", "runbook_url"} <= set(r.get("annotations", {})):
        err(f"alert {r['alert']}: needs summary, description and runbook_url")
tests = docs[pathlib.Path("deploy/prometheus/alerts_test.yml")][0]
check_exprs("alerts_test.yml", [s["series"] for t in tests["tests"] for s in t["input_series"]])
tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
for r in (r for g in rules["groups"] for r in g["rules"]):
    if r["alert"] not in tested:
        err(f"alert {r['alert']} is never tested firing in alerts_test.yml")

path = pathlib.Path("deploy/grafana/gyro-dashboard.json")
try:
    dash = json.loads(path.read_text())
except json.JSONDecodeError as e:
    err(f"{path}: {e}")
    dash = {"panels": []}
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
panels = list(walk(dash["panels"]))
exprs = []
for p in panels:
    if p.get("type") == "row":
        continue
    ds = p.get("datasource", {})
    if ds.get("uid") != "${DS_PROMETHEUS}":
        err(f"panel {p.get('title')!r}: datasource {ds}, want uid ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        err(f"panel {p.get('title')!r}: no queries")
    exprs += [t["expr"] for t in p.get("targets", [])]
variables = dash.get("templating", {}).get("list", [])
if not any(v.get("name") == "DS_PROMETHEUS" and v.get("type") == "datasource" for v in variables):
    err("dashboard: no DS_PROMETHEUS datasource variable")
var_queries = [v["definition"] for v in variables if v.get("type") == "query"]
check_exprs(f"{path.name}", exprs + [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q) for q in var_queries])
# promtool parses them all as recording rules, with Grafana's variables filled in.
def fill(e):
    return (e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
             .replace("$job", "gyro").replace("$instance", ".+"))
(TMP / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard_expr_{i}", "expr": fill(e)} for i, e in enumerate(exprs)]}]}))
ok(f"{path.name}: {len(panels)} panels, schemaVersion {dash.get('schemaVersion')}")

if errors:
    print(f"\n{len(errors)} problem(s)", file=sys.stderr)
    sys.exit(1)
PY
promtool check rules "$TMP/dashboard_rules.yml" >/dev/null \
  || { promtool check rules "$TMP/dashboard_rules.yml"; fail "a dashboard expression does not parse"; }
echo "  ok    gyro-dashboard.json: every expression parses (promtool)"

step "kubernetes: schema validation (kubernetes-validate --strict)"
# The ServiceMonitor is a CRD without a bundled schema (a warning); it was checked above.
python3 -m kubernetes_validate --strict --quiet "$TMP/rendered.yaml" deploy/kubernetes/secret.example.yaml
echo "  ok    rendered kustomization and example Secret validate"

# --- 6. Dockerfile ----------------------------------------------------------------------------
step "Dockerfile"
df=deploy/Dockerfile
grep -qE '^FROM rust:1-bookworm AS builder$' $df || fail "$df: builder stage rust:1-bookworm"
grep -qE 'cargo build --release --locked' $df || fail "$df: cargo build --release --locked"
grep -qE '^FROM debian:bookworm-slim$' $df || fail "$df: runtime stage debian:bookworm-slim"
grep -qE '^USER 10001:10001$' $df || fail "$df: USER 10001:10001"
grep -qE '^VOLUME \["/var/lib/gyro"\]$' $df || fail "$df: VOLUME /var/lib/gyro"
grep -qE '^EXPOSE 3868 9464$' $df || fail "$df: EXPOSE 3868 9464"
grep -qE '^ENTRYPOINT \["gyro"\]$' $df || fail "$df: ENTRYPOINT [\"gyro\"]"
grep -qE '^CMD \["serve", "--config", "/etc/gyro/gyro.toml"\]$' $df || fail "$df: CMD serve --config"
while read -r src; do
  [[ -e $src ]] || fail "$df: COPY source $src missing"
  grep -qxF "!$src" deploy/Dockerfile.dockerignore || fail "deploy/Dockerfile.dockerignore excludes $src, which $df copies"
done < <(sed -nE 's#^COPY (deploy/[^ ]+) .*#\1#p' $df)
grep -qxF target deploy/Dockerfile.dockerignore && grep -qxF .git deploy/Dockerfile.dockerignore \
  || fail "deploy/Dockerfile.dockerignore must exclude target and .git"
echo "  ok    $df: stages, user, ports, volume, entrypoint, copied files not ignored"

# --- 7. systemd -------------------------------------------------------------------------------
step "systemd: systemd-analyze verify and security"
# verify fails when ExecStart's binary is missing (gyro is not installed here), so a copy of
# the unit with ExecStart=/bin/true is verified; everything else is the file as shipped.
mkdir -p "$TMP/unit"
sed -E 's#^ExecStart=/usr/local/bin/gyro( |$)#ExecStart=/bin/true\1#' deploy/gyro.service >"$TMP/unit/gyro.service"
grep -q '^ExecStart=/bin/true ' "$TMP/unit/gyro.service" || fail "deploy/gyro.service: ExecStart is not /usr/local/bin/gyro"
# verify exits 0 on an unknown key ("ignoring"): any message at all is a failure.
systemd-analyze verify "$TMP/unit/gyro.service" >"$TMP/verify.out" 2>&1 \
  || { cat "$TMP/verify.out"; fail "systemd-analyze verify"; }
[[ ! -s $TMP/verify.out ]] || { cat "$TMP/verify.out"; fail "systemd-analyze verify printed warnings"; }
echo "  ok    systemd-analyze verify (no warnings)"
systemd-analyze security --offline=yes --threshold=20 --no-pager "$TMP/unit/gyro.service" | tail -1

printf '\nALL CHECKS PASSED\n'
