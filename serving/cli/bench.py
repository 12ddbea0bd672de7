"""``cascade bench``: teacher-only, student-only and cascade serving side by side, with an echo
deployment as the framework's ceiling, all on one Ray Serve instance with the same settings.

Single-text load comes from ``wrk`` (a C load generator, so the client takes little CPU from
the server on a small machine) when it is installed, else from one async Python process;
batched requests and the accuracy pass come from the async Python client. Each service is
the same application asked with ``mode`` = teacher / student / cascade, so all three share
exactly the same Serve settings.
"""


import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx
import numpy as np
from fastapi import FastAPI
from ray import serve

from serving.api import ClassifyRequest
from serving.config import CascadeConfig

SERVICES = ("echo", "student", "teacher", "cascade")

echo_api = FastAPI()


@serve.deployment
@serve.ingress(echo_api)
class Echo:
    """Parses the same request body as the cascade and answers at once: the HTTP ceiling."""

    @echo_api.post("/v1/classify")
    async def classify(self, body: ClassifyRequest) -> dict:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return {"predictions": [{"label": text[:16], "tier": "echo", "escalated": False} for text in texts]}


def start_echo(config: CascadeConfig) -> str:
    """Run the echo app beside the cascade, with the ingress's settings; returns its URL."""
    ingress = config.ingress
    app = Echo.options(
        num_replicas=ingress.num_replicas,
        max_ongoing_requests=ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": ingress.num_cpus},
    ).bind()
    serve.run(app, name="echo", route_prefix="/echo")
    return f"http://{config.host}:{config.port}/echo"


def _body(texts: Sequence[str] | str, service: str) -> dict:
    """A request body; every bench request is evaluation traffic (answered, never logged for distillation)."""
    options = {"mode": service} if service in ("student", "teacher", "cascade") else {}
    return {"inputs": texts, "options": {**options, "evaluation": True}}


_WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def _wrk_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk_single(url: str, texts: Sequence[str], service: str, connections: int, seconds: float) -> dict:
    """Requests/s and p50/p99 latency of single-text requests, driven by wrk."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps(_body(t, service)) + "\n" for t in texts))
        script = Path(tmp) / "bench.lua"
        script.write_text(_WRK_SCRIPT)
        threads = min(2, connections)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script), f"{url}/v1/classify"],
            capture_output=True, text=True, check=True, env={"BENCH_BODIES": str(bodies), "PATH": "/usr/bin:/bin"},
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?timeout)\s*:?\s*(\d+)", out))
    p50 = _wrk_seconds(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _wrk_seconds(re.search(r"\s99%\s+(\S+)", out).group(1))
    return {"requests": requests, "requests_per_s": round(rps, 1), "p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1),
            "errors": errors, "client": "wrk"}


async def _python_single(url: str, texts: Sequence[str], service: str, connections: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=connections)) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await client.post(f"{url}/v1/classify", json=_body(texts[i % len(texts)], service))
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200
                i += connections

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "errors": errors,
        "client": "python-async",
    }


def single_text_load(url: str, texts: Sequence[str], service: str, connections: int, seconds: float) -> dict:
    """Single-text load with wrk when installed, else the async Python client."""
    if shutil.which("wrk"):
        return wrk_single(url, texts, service, connections, seconds)
    return asyncio.run(_python_single(url, texts, service, connections, seconds))


async def _batched_pass(url: str, texts: Sequence[str], service: str, batch: int, concurrency: int) -> tuple[list[dict], float]:
    chunks = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    results: list[list[dict]] = [[] for _ in chunks]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def send(k: int) -> None:
            async with semaphore:
                response = await client.post(f"{url}/v1/classify", json=_body(chunks[k], service))
                response.raise_for_status()
                results[k] = response.json()["predictions"]

        started = time.perf_counter()
        await asyncio.gather(*(send(k) for k in range(len(chunks))))
        elapsed = time.perf_counter() - started
    return [p for chunk in results for p in chunk], elapsed


def batched_pass(url: str, texts: Sequence[str], service: str, batch: int = 64, concurrency: int = 4) -> tuple[list[dict], float]:
    """Every text through ``service`` in ``batch``-text requests; returns predictions and seconds."""
    return asyncio.run(_batched_pass(url, texts, service, batch, concurrency))


def warm_control(url: str, texts: Sequence[str], max_passes: int = 6, progress=print) -> dict:
    """Cascade passes over ``texts`` until online control has settled (the live threshold the
    same after two passes in a row), at most ``max_passes``: a promoted student starts with every
    item at the teacher and comes down as live evidence arrives, so a bench of a fresh home would
    otherwise measure control's safe start, not the steady state. Returns the passes and the
    live status it settled at (``live`` None when control is off)."""
    previous, live = None, None
    for number in range(1, max_passes + 1):
        batched_pass(url, texts, "cascade")
        time.sleep(1.5)  # replicas sync the shared control state once a second
        live = httpx.get(f"{url}/v1/models", timeout=30).json().get("live")
        threshold = live.get("threshold") if live else None
        progress(f"bench: warming control, pass {number}/{max_passes}: live threshold {threshold}")
        if threshold is None or threshold == previous:
            return {"passes": number, "live": live}
        previous = threshold
    return {"passes": max_passes, "live": live}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(report: dict) -> str:
    """The bench report as a Markdown table."""
    rows = [
        "| service | accuracy (HTTP) | teacher share | cost / 1,000 | req/s @1 | p50/p99 ms @1 | req/s @16 | p50/p99 ms @16 | texts/s (64-text requests) | model-only texts/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SERVICES:
        r = report["services"][name]
        one, many = r["single_1"], r["single_16"]
        accuracy = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        share = f"{r['teacher_share']:.2%}" if r.get("teacher_share") is not None else "-"
        model_only = f"{r['model_only_texts_per_s']:.0f}" if r.get("model_only_texts_per_s") else "-"
        cost = f"{r['cost_per_1000']:.0f}" if r.get("cost_per_1000") is not None else "-"
        rows.append(
            f"| {name} | {accuracy} | {share} | {cost} | {one['requests_per_s']:.0f} | {one['p50_ms']:.0f}/{one['p99_ms']:.0f} | "
            f"{many['requests_per_s']:.0f} | {many['p50_ms']:.0f}/{many['p99_ms']:.0f} | {r['batch_texts_per_s']:.0f} | {model_only} |"
        )
    cpu_lines = [f"{name} " + ", ".join(f"{label} {ms:.3f}" for label, ms in sorted(r["batch_cpu_ms_per_text"].items()))
                 for name, r in report["services"].items() if r.get("batch_cpu_ms_per_text")]
    if cpu_lines:
        rows += ["", "CPU ms per text in the 64-text passes, by Serve process: " + "; ".join(cpu_lines) + "."]
    control = report["services"]["cascade"].get("control")
    if control:
        live = control["live"]
        settled = (f"live threshold {live['threshold']:.4g} (fitted {live['fitted_threshold']:.4g}), goal held: {live['held']}"
                   if live and live.get("threshold") is not None else "control off")
        rows += ["", f"The cascade was measured after {control['passes']} pass(es) that warmed online control up: {settled}."]
    checks = report["checks"]
    rows += ["", "| check | measured | target |", "|---|---|---|",
             f"| cascade accuracy minus the teacher's (HTTP) | {checks['cascade_accuracy_minus_teacher']:+.4f} | ≥ 0 |",
             f"| cascade / teacher texts/s, 64-text requests | {checks['cascade_over_teacher_batch_throughput']:.2f} | ≥ 3 |",
             f"| cascade / student texts/s, 64-text requests (4 clients) | {checks['cascade_over_student_batch_texts']:.2f} | ≥ 0.5 |",
             f"| its bound from CPU (the teacher's CPU per text in full batches × the consulted share) | {_figure(checks['cascade_over_student_batch_bound'])} | |",
             f"| cascade / echo requests/s, single texts at 16 clients | {checks['cascade_over_echo_single_16']:.2f} | ≥ 0.5 |"]
    paired = report.get("paired_single_16")
    if paired:
        rows += ["", f"Pairs at 16 clients, cascade/echo req/s: {', '.join(f'{r:.2f}' for r in paired['ratios'])} "
                     f"(median {paired['median']:.2f})."]
        if paired.get("cpu_ratio") is not None:
            processes = sorted({label for per in paired["cpu_ms_per_request"].values() for label in per})
            rows += ["", "| CPU ms per request (median of the pairs) | " + " | ".join(processes) + " | total |",
                     "|---|" + "---|" * (len(processes) + 1)]
            for name, per in paired["cpu_ms_per_request"].items():
                cells = " | ".join(f"{per[label]:.2f}" if label in per else "-" for label in processes)
                rows.append(f"| {name} | {cells} | {paired['cpu_ms_per_request_total'][name]:.2f} |")
            rows += ["", f"CPU ratio (echo total / cascade total): {paired['cpu_ratio']:.2f}."]
    if report.get("paths"):
        rows += ["", "| path (proxy.kind) | echo req/s @16 | echo p99 ms | cascade req/s @16 | cascade p99 ms | cascade/echo | "
                     "non-2xx | CPU ms/request echo, cascade | cascade texts/s (64-text requests) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for kind, path in report["paths"].items():
            echo, cascade, cpu = path["echo"], path["cascade"], path["cpu_ms_per_request_total"]
            rows.append(f"| {kind} | {echo['requests_per_s']:.0f} | {echo['p99_ms']:.0f} | {cascade['requests_per_s']:.0f} | "
                        f"{cascade['p99_ms']:.0f} | {path['ratio']:.2f} | {echo['errors'] + cascade['errors']} | "
                        f"{cpu['echo']:.2f}, {cpu['cascade']:.2f} | {cascade['batch_texts_per_s']:.0f} |")
    return "\n".join(rows)


def model_only(config: CascadeConfig, texts: Sequence[str]) -> dict:
    """In-process batched throughput (no serving): the limit each service could reach."""
    from distill.backends import HFClassifier
    from distill.metadata import escalation_policy
    from distill.registry import Registry

    registry = Registry(config.paths().registry)
    student = HFClassifier.load(registry.resolve("student", config.student.model), device="cpu")
    teacher = HFClassifier.load(registry.resolve("teacher", config.teacher.model), device="cpu")
    timings = {}
    for name, model in (("student", student), ("teacher", teacher)):
        model.predict_proba(list(texts[:8]))
        started = time.perf_counter()
        probs = model.predict_proba(list(texts))
        timings[name] = (time.perf_counter() - started, probs)
    policy = escalation_policy(student.meta)
    escalate = policy.escalate_mask(timings["student"][1], config.routing.threshold)
    # the teacher's cost scales with the share it sees
    cascade_s = timings["student"][0] + timings["teacher"][0] * float(escalate.mean())
    return {
        "student": len(texts) / timings["student"][0],
        "teacher": len(texts) / timings["teacher"][0],
        "cascade": len(texts) / cascade_s,
    }


def serve_processes(timeout_s: float = 30.0) -> dict[str, list[int]]:
    """Process ids of the Serve replicas running on this machine, by deployment name (the
    proxy as "proxy"), for CPU accounting; empty where /proc cannot be read. A replica that
    does not answer within ``timeout_s`` (stopping, or not started yet) is left out."""
    import ray

    if not Path("/proc/self/stat").exists():
        return {}
    here = ray.util.get_node_ip_address()
    found: dict[str, list[int]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] != "serve" or not name.startswith(("SERVE_REPLICA", "SERVE_PROXY")):
            continue
        try:
            pid, node = ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(
                lambda _: (os.getpid(), ray.util.get_node_ip_address())), timeout=timeout_s)
        except Exception:  # a replica that is stopping or not started yet
            continue
        if node == here:
            found.setdefault(name.split("#")[1] if "#" in name else "proxy", []).append(pid)
    for label, pids in found.items():  # HAProxy on the fast path, an ingress's traffic writer: their CPU is the replica's too
        pids += _children(pids)
    return found


def _children(parents: Sequence[int]) -> list[int]:
    """Process ids of the processes whose parent is one of ``parents``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent in parents:
            children.append(int(stat.parent.name))
    return children


def _cpu_seconds(processes: dict[str, list[int]]) -> dict[str, float]:
    """User plus system CPU seconds each deployment's processes have used so far (a process
    that has exited counts as nothing, so a run during a replica restart reads low)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for label, pids in processes.items():
        used[label] = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[label] += (int(fields[11]) + int(fields[12])) / tick
    return used


def _own_cpu_seconds() -> float:
    """User plus system CPU seconds this process (the bench's HTTP client) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def used_by(pids: dict[str, list[int]], service: str) -> list[str]:
    """The Serve processes a service's requests run in: the echo's proxy and replica; the
    cascade app's proxy and deployments for the others (the Monitor samples, it serves nothing)."""
    if service == "echo":
        return [label for label in pids if label in ("proxy", "Echo")]
    return [label for label in pids if label not in ("Echo", "Monitor")]


def _measured_run(url: str, texts: Sequence[str], service: str, seconds: float, processes: dict[str, list[int]],
                  used_by: Sequence[str]) -> dict:
    """One 16-client single-text run, with the CPU milliseconds per request of each deployment it uses."""
    before = _cpu_seconds(processes)
    result = single_text_load(url, texts, service, 16, seconds)
    after = _cpu_seconds(processes)
    requests = max(result["requests"], 1)
    result["cpu_ms_per_request"] = {label: round((after[label] - before[label]) * 1000 / requests, 2) for label in used_by}
    return result


def paired_ratio(echo_url: str, url: str, texts: Sequence[str], seconds: float, pairs: int, progress=print) -> dict:
    """Cascade over echo in single-text req/s at 16 clients, measured in pairs whose order
    alternates: on a small shared machine whatever else runs drifts by more than the effect, but
    it hits both runs of a pair alike, so the median of the pairs' ratios is the figure to trust.
    Each run also reports the CPU milliseconds per request of each Serve process it uses (from
    /proc), a cost that drifts less than throughput: its ratio is the structural one."""
    pids = serve_processes()
    uses = {name: used_by(pids, name) for name in ("echo", "cascade")}
    ratios: list[float] = []
    runs_of: dict[str, list[dict]] = {"echo": [], "cascade": []}
    for number in range(1, pairs + 1):
        order = ("echo", "cascade") if number % 2 else ("cascade", "echo")
        progress(f"bench: pair {number}/{pairs}: {order[0]} then {order[1]}, 16 clients, {seconds:.0f} s each")
        runs = {name: _measured_run(echo_url if name == "echo" else url, texts, name, seconds, pids, uses[name]) for name in order}
        ratios.append(round(runs["cascade"]["requests_per_s"] / runs["echo"]["requests_per_s"], 2))
        for name in runs_of:
            runs_of[name].append(runs[name])
    median_cpu = {name: {label: round(float(np.median([run["cpu_ms_per_request"][label] for run in runs])), 2) for label in uses[name]}
                  for name, runs in runs_of.items()}
    totals = {name: round(sum(per.values()), 2) for name, per in median_cpu.items()}
    # each service's median run figures, and every error of every run
    medians = {name: {key: round(float(np.median([run[key] for run in runs])), 1) for key in ("requests_per_s", "p50_ms", "p99_ms")}
               | {"errors": sum(run["errors"] for run in runs)} for name, runs in runs_of.items()}
    return {"ratios": ratios, "median": float(np.median(ratios)), "runs": medians, "cpu_ms_per_request": median_cpu,
            "cpu_ms_per_request_total": totals, "cpu_ratio": round(totals["echo"] / totals["cascade"], 2) if pids else None}


PATHS = ("haproxy", "serve")  # ProxyConfig.kind: Ray Serve's fast path, and its Python proxy


def _path_figures(paired: dict, cascade_batch_texts_per_s: float) -> dict:
    """One path's row of the side-by-side comparison."""
    return {"echo": paired["runs"]["echo"], "cascade": paired["runs"]["cascade"] | {"batch_texts_per_s": cascade_batch_texts_per_s},
            "ratio": paired["median"], "cpu_ms_per_request_total": paired["cpu_ms_per_request_total"]}


def other_path(config: CascadeConfig, texts: Sequence[str], seconds: float, pairs: int, progress=print) -> tuple[str, dict]:
    """The echo and the cascade on the proxy the config does not choose (a Ray cluster of its own,
    since Ray reads the proxy from its processes' environment at start): its kind and figures."""
    from serving.cli import runner

    kind = next(k for k in PATHS if k != config.proxy.kind)
    other = config.model_copy(update={"proxy": config.proxy.model_copy(update={"kind": kind})})
    progress(f"bench: restarting on the other path (proxy.kind {kind})")
    url = runner.start(other)
    try:
        echo_url = start_echo(other)
        _, elapsed = batched_pass(url, texts, "cascade")
        paired = paired_ratio(echo_url, url, list(texts[:500]), seconds, pairs, progress)
    finally:
        runner.stop()
    return kind, _path_figures(paired, round(len(texts) / elapsed, 1))


def run_bench(config: CascadeConfig, texts: Sequence[str], labels: Sequence[str], seconds: float, pairs: int,
              both_paths: bool = True, progress=print) -> dict:
    """Start everything, measure every service (then ``pairs`` alternating echo/cascade runs), stop;
    with ``both_paths``, measure the echo and the cascade on the other proxy too. Returns the report."""
    from serving.cli import runner

    pairs = max(pairs, 1) if both_paths else pairs  # the comparison of paths reads the pairs' figures
    progress("bench: model-only throughput (in-process, no serving)")
    limits = model_only(config, texts)
    progress("bench: starting the cascade and the echo ceiling on Ray Serve")
    url = runner.start(config)
    try:
        echo_url = start_echo(config)
        services: dict[str, dict] = {}
        sample = list(texts[:500])
        pids = serve_processes()
        for name in SERVICES:
            target = echo_url if name == "echo" else url
            if name == "cascade":
                warmed = warm_control(url, texts, progress=progress)
            progress(f"bench: {name}: {len(texts)} texts in 64-text requests")
            before = _cpu_seconds(pids) | {"client": _own_cpu_seconds()}
            predictions, elapsed = batched_pass(target, texts, name)
            after = _cpu_seconds(pids) | {"client": _own_cpu_seconds()}
            result: dict = {"batch_texts_per_s": round(len(texts) / elapsed, 1),
                            "batch_cpu_ms_per_text": {label: round((after[label] - before[label]) * 1000 / len(texts), 3)
                                                      for label in [*used_by(pids, name), "client"]}}
            if name != "echo":
                result["accuracy"] = round(float(np.mean([p["label"] == y for p, y in zip(predictions, labels)])), 4)
                result["teacher_share"] = round(float(np.mean([p["tier"] == "teacher" for p in predictions])), 4)
                result["consulted_share"] = round(float(np.mean([p["consulted"] for p in predictions])), 4)
                result["model_only_texts_per_s"] = round(limits[name], 1)
                result["cost_per_1000"] = round(float(np.mean([p["cost"] for p in predictions])) * 1000, 1)
            for connections in (1, 16):
                progress(f"bench: {name}: single-text requests, {connections} client(s), {seconds:.0f} s")
                result[f"single_{connections}"] = single_text_load(target, sample, name, connections, seconds)
            services[name] = result
        services["cascade"]["control"] = warmed
        paired = paired_ratio(echo_url, url, sample, seconds, pairs, progress) if pairs > 0 else None
    finally:
        runner.stop()
    paths = None
    if both_paths:
        kind, figures = other_path(config, texts, seconds, pairs, progress)
        paths = {config.proxy.kind: _path_figures(paired, services["cascade"]["batch_texts_per_s"]), kind: figures}
    cascade, teacher, echo = services["cascade"], services["teacher"], services["echo"]
    single_ratio = round(cascade["single_16"]["requests_per_s"] / echo["single_16"]["requests_per_s"], 2)
    return {
        "rows": len(texts),
        "services": services,
        "paired_single_16": paired,
        "paths": paths,
        "checks": {
            "cascade_accuracy_minus_teacher": round(cascade["accuracy"] - teacher["accuracy"], 4),
            "cascade_over_teacher_batch_throughput": round(cascade["batch_texts_per_s"] / teacher["batch_texts_per_s"], 2),
            "cascade_over_echo_single_16": paired["median"] if paired else single_ratio,
            "cascade_over_student_batch_texts": round(cascade["batch_texts_per_s"] / services["student"]["batch_texts_per_s"], 2),
            "cascade_over_student_batch_bound": batch_bound(services),
        },
    }


def batch_bound(services: dict) -> float | None:
    """The most cascade / student texts/s in 64-text requests can be on a machine whose CPUs
    bound both, from the CPU each used in its pass: the student service's CPU per text (every
    Serve process it ran in, and the client), against that plus the teacher's CPU per text in
    the teacher-only pass (full batches, its cheapest) times the share of texts the cascade
    consulted the teacher on. None without CPU figures (no /proc)."""
    student = sum(services["student"]["batch_cpu_ms_per_text"].values())
    teacher = services["teacher"]["batch_cpu_ms_per_text"].get("Teacher")
    if not student or not teacher:
        return None
    return round(student / (student + services["cascade"]["consulted_share"] * teacher), 2)
