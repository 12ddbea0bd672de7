#!/usr/bin/env bash
# What the traffic log costs the single-text path, on one build: `cascade serve` with
# feedback.keep_traffic true and false, alternating, each on a fresh copy of HOME; wrk at CONNECTIONS
# connections (16) sends single texts in student mode (evaluation traffic) for 10 s, twice per
# server after a 5 s warm-up; prints requests/s, p50, the ingress replica's CPU ms per request
# (with its traffic writer process's; then its event loop's and its writer's alone) and the
# machine's busy share (wrk included) of every run, then the medians and the cost by round (the
# log on against off in the same round).
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
ingress_ticks() {  # JSON: CPU ticks of each thread of the ingress replicas, and of their children (the traffic log's writers)
  python - $(pgrep -f "ServeReplica:cascade:Ingress") <<'PY'
import json, os, subprocess, sys
def ticks(stat):  # utime + stime, after the command name (which may hold spaces)
    fields = open(stat).read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
threads, children = {}, {}
for pid in sys.argv[1:]:
    for tid in os.listdir(f"/proc/{pid}/task"):
        threads[tid] = ticks(f"/proc/{pid}/task/{tid}/stat")
    for child in subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split():
        children[child] = ticks(f"/proc/{child}/stat")
print(json.dumps({"threads": threads, "children": children}))
PY
}
cpu_per_request() {  # ms per request: the ingress's whole CPU with its children's, its busiest thread's (the event loop's), its children's
  python - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'PY'
import json, sys
before, after, requests, hz = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
used = {kind: [after[kind][k] - before[kind].get(k, 0) for k in after[kind]] for kind in after}
ms = lambda t: round(t * 1000 / hz / requests, 3)
print(f"ingress_cpu_ms_per_request={ms(sum(used['threads']) + sum(used['children']))} "
      f"loop_cpu_ms_per_request={ms(max(used['threads'], default=0))} writer_cpu_ms_per_request={ms(sum(used['children']))}")
PY
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
           "$(cpu_per_request "$before" "$after" "$requests")" \
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
    runs.setdefault(keep, []).append((per_s, *(float(re.search(rf"{part}_cpu_ms_per_request=([\d.]+)", line).group(1))
                                               for part in ("ingress", "loop", "writer"))))
    by_round.setdefault(rnd, {}).setdefault(keep, []).append(per_s)
for keep, values in runs.items():
    print(f"keep_traffic={keep}: median {statistics.median(v[0] for v in values):.0f} requests/s, "
          f"CPU ms per request (medians): ingress {statistics.median(v[1] for v in values):.3f}, its event loop "
          f"{statistics.median(v[2] for v in values):.3f}, its writer {statistics.median(v[3] for v in values):.3f}; over {len(values)} runs")
# each round's servers ran minutes apart, so a round's ratio is the least disturbed by the machine's drift
costs = [100 * (1 - statistics.mean(r["true"]) / statistics.mean(r["false"])) for r in by_round.values() if len(r) == 2]
print("cost by round (% of requests/s): " + ", ".join(f"{c:.1f}" for c in costs)
      + f"; median {statistics.median(costs):.1f} %" if costs else "no whole round")
PY
