#!/usr/bin/env bash
# What the traffic log costs the single-text path, on one build: `cascade serve` with
# feedback.keep_traffic true and false, alternating, each on a fresh copy of HOME; wrk at CONNECTIONS
# connections (16) sends single texts in student mode (evaluation traffic) for 10 s, twice per
# server after a 5 s warm-up; prints requests/s, p50 and the ingress replica's CPU ms per
# request (its traffic writer process's included) and the machine's busy share (wrk included) of
# every run, then the medians and the cost by round (the log on against off in the same round).
#
#   [CONNECTIONS=16] tests/benchmarks/traffic_log_cost.sh HOME [ROUNDS=3] [TEXTS_CSV=../shared/data/banking77/test.csv]
#
# CONNECTIONS: wrk's connections (16, as `cascade bench`). In a closed loop a request's wait for
# its commit leaves the server idle unless enough connections keep it busy: with more of them
# the figure is the cost to the path's capacity rather than to 16 clients' throughput.
# HOME: a bootstrapped home (`cascade bootstrap --home HOME`); it is copied, never changed.
# Needs wrk. Port 8011. Run it on a quiet machine: the client shares its CPUs.
set -euo pipefail
home=$(realpath "$1"); rounds=${2:-3}; connections=${CONNECTIONS:-16}
root=$(cd "$(dirname "$0")/../.." && pwd)
texts=${3:-$root/../shared/data/banking77/test.csv}
work=$(mktemp -d)
trap 'pkill -INT -f "serving.cli serve --home $work/home" || true; rm -rf "$work"' EXIT
# the bodies and the wrk script of `cascade bench` (serving.cli.bench): student mode, evaluation traffic
python - "$texts" "$work" <<'PY'
import csv, json, sys
from serving.cli.bench import _WRK_SCRIPT, _body
rows = list(csv.DictReader(open(sys.argv[1])))[:400]
with open(f"{sys.argv[2]}/bodies.jsonl", "w") as f:
    f.writelines(json.dumps(_body(row["text"], "student")) + "\n" for row in rows)
open(f"{sys.argv[2]}/bench.lua", "w").write(_WRK_SCRIPT)
PY
export BENCH_BODIES="$work/bodies.jsonl"
for keep in true false; do printf 'feedback:\n  keep_traffic: %s\n' $keep > "$work/keep_$keep.yaml"; done
ingress_ticks() {  # the ingress replicas' CPU ticks, with their children's (the traffic log's writer processes)
  for pid in $(pgrep -f "ServeReplica:cascade:Ingress"); do
    for p in $pid $(pgrep -P "$pid"); do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done
  done | awk '{s+=$1} END {print s+0}'
}
machine_ticks() {  # busy and all CPU ticks of the whole machine (busy: all but idle and iowait)
  awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
}
for round in $(seq "$rounds"); do
  for keep in true false; do
    rm -rf "$work/home" && cp -r "$home" "$work/home"
    python -m serving.cli serve --home "$work/home" --port 8011 --config "$work/keep_$keep.yaml" -q > "$work/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 240); do curl -sf -o /dev/null http://127.0.0.1:8011/readyz && break; sleep 1; done
    wrk -t2 -c"$connections" -d5s -s "$work/bench.lua" http://127.0.0.1:8011/v1/classify > /dev/null
    for run in 1 2; do
      before=$(ingress_ticks); machine_before=$(machine_ticks)
      out=$(wrk -t2 -c"$connections" -d10s --latency -s "$work/bench.lua" http://127.0.0.1:8011/v1/classify)
      after=$(ingress_ticks); machine_after=$(machine_ticks)
      requests=$(echo "$out" | awk '/requests in/ {print $1}')
      echo "keep_traffic=$keep round=$round run=$run connections=$connections requests_per_s=$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
           "p50=$(echo "$out" | awk '$1=="50%" {print $2}') non_2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}' | grep . || echo 0)" \
           "ingress_cpu_ms_per_request=$(python -c "print(round(($after - $before) * 1000 / $(getconf CLK_TCK) / $requests, 3))")" \
           "machine_busy=$(python -c "b0, t0, b1, t1 = map(int, '$machine_before $machine_after'.split()); print(round((b1 - b0) / (t1 - t0), 3))")"
    done | tee -a "$work/runs.txt"
    kill -INT $server; wait $server || true
  done
done
python - "$work/runs.txt" <<'PY'
import re, statistics, sys
runs, by_round = {}, {}
for line in open(sys.argv[1]):
    keep, rnd = re.search(r"keep_traffic=(\w+) round=(\d+)", line).groups()
    per_s = float(re.search(r"requests_per_s=([\d.]+)", line).group(1))
    runs.setdefault(keep, []).append((per_s, float(re.search(r"ingress_cpu_ms_per_request=([\d.]+)", line).group(1))))
    by_round.setdefault(rnd, {}).setdefault(keep, []).append(per_s)
for keep, values in runs.items():
    print(f"keep_traffic={keep}: median {statistics.median(v[0] for v in values):.0f} requests/s, "
          f"median {statistics.median(v[1] for v in values):.3f} ingress CPU ms per request, over {len(values)} runs")
# each round's servers ran minutes apart, so a round's ratio is the least disturbed by the machine's drift
costs = [100 * (1 - statistics.mean(r["true"]) / statistics.mean(r["false"])) for r in by_round.values() if len(r) == 2]
print("cost by round (% of requests/s): " + ", ".join(f"{c:.1f}" for c in costs)
      + f"; median {statistics.median(costs):.1f} %" if costs else "no whole round")
PY
