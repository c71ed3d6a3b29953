#!/usr/bin/env bash
# A two-node Ray cluster on this machine (a head and a second node process), the layout the
# multi-node test uses. Usage: infra/local-cluster.sh start|stop|status
# Then: RAY_ADDRESS=127.0.0.1:${RAY_PORT:-6390} refusals run --study studies/demo.yaml
# or, with RAY_DASHBOARD_PORT set, submit stages through the Ray Jobs API (the DAG's
# ray_jobs_address param, e.g. http://127.0.0.1:8265).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ray="${RAY:-$here/.venv/bin/ray}"
port="${RAY_PORT:-6390}"
tmp="${RAY_TMP:-/tmp/refusals-ray}"
# Loopback only, so no token auth here; a real cluster keeps Ray's token auth on and gives
# every node and client the token (RAY_AUTH_TOKEN or ~/.ray/auth_token).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
# RAY_DASHBOARD_PORT=8265 turns on the dashboard, which serves the Ray Jobs API
dash=(--include-dashboard=false)
if [ -n "${RAY_DASHBOARD_PORT:-}" ]; then
  dash=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT")
fi
case "${1:-}" in
  start)
    "$ray" start --head --node-ip-address=127.0.0.1 --port="$port" --num-cpus=1 \
      "${dash[@]}" --temp-dir="$tmp" --disable-usage-stats >/dev/null
    "$ray" start --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus=1 \
      --temp-dir="$tmp" --disable-usage-stats >/dev/null
    echo "ray cluster up: RAY_ADDRESS=127.0.0.1:$port"
    ;;
  stop)
    # Only this cluster: its processes are the ones started with our temp dir (raylets, GCS,
    # dashboard); their workers exit with their raylet. `ray stop` would stop every Ray on the
    # machine, another user's or test's included.
    pkill -TERM -f -- "$tmp" 2>/dev/null || true
    for _ in $(seq 1 20); do
      pgrep -f -- "$tmp" >/dev/null || break
      sleep 0.5
    done
    pkill -KILL -f -- "$tmp" 2>/dev/null || true
    echo "ray cluster stopped"
    ;;
  status)
    "$ray" status --address="127.0.0.1:$port"
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
