"""Reading the nodes' exposition text back into the dashboard's figures (pure logic, no Ray)."""

from __future__ import annotations

from serving.metrics import cascade_exposition, read_figures, refresh_outcome

WORKER = 'Component="core_worker",WorkerId="{w}",otel_scope_name="x"'


def node_text(worker: str, student_items: float, teacher_items: float, version: str) -> str:
    labels = WORKER.format(w=worker)
    return "\n".join([
        "# HELP ray_cascade_items_total texts answered",
        "# TYPE ray_cascade_items_total counter",
        f'ray_cascade_items_total{{{labels},mode="cascade",tier="student"}} {student_items}',
        f'ray_cascade_items_total{{{labels},mode="cascade",tier="teacher"}} {teacher_items}',
        "# HELP ray_cascade_requests_total requests",
        "# TYPE ray_cascade_requests_total counter",
        f'ray_cascade_requests_total{{{labels},mode="cascade"}} 2.0',
        "# HELP ray_cascade_tier_latency_seconds model call",
        "# TYPE ray_cascade_tier_latency_seconds histogram",
        f'ray_cascade_tier_latency_seconds_bucket{{{labels},le="0.01",tier="student"}} 1.0',
        f'ray_cascade_tier_latency_seconds_bucket{{{labels},le="0.1",tier="student"}} 2.0',
        f'ray_cascade_tier_latency_seconds_bucket{{{labels},le="+Inf",tier="student"}} 2.0',
        f'ray_cascade_tier_latency_seconds_count{{{labels},tier="student"}} 2.0',
        f'ray_cascade_tier_latency_seconds_sum{{{labels},tier="student"}} 0.05',
        "# HELP ray_cascade_model_info served version",
        "# TYPE ray_cascade_model_info gauge",
        f'ray_cascade_model_info{{{labels},role="student",version="{version}"}} 1.0',
        f'ray_cascade_model_info{{{labels},role="student",version="old"}} 0.0',
        "# HELP ray_serve_num_http_requests_total not ours",
        "# TYPE ray_serve_num_http_requests_total counter",
        'ray_serve_num_http_requests_total{route="/"} 99.0',
    ]) + "\n"


def test_figures_sum_every_worker_of_every_node():
    figures = read_figures([node_text("a", 10, 2, "v2"), node_text("b", 5, 1, "v2")])
    assert figures.sources == 2
    assert figures.items == {"student": 15.0, "teacher": 3.0}
    assert figures.requests == 4.0
    latency = figures.latency["student"]
    assert latency.count == 4.0 and abs(latency.sum - 0.1) < 1e-9
    assert latency.buckets == [(0.01, 2.0), (0.1, 4.0)]  # +Inf lives in the count
    assert figures.versions == {"student": ["v2"]}  # a swapped-out version (0) is not served


def test_only_the_cascades_series_are_kept_without_rays_prefix():
    kept = cascade_exposition(node_text("a", 1, 1, "v"))
    assert "ray_" not in kept and "serve_num_http_requests" not in kept
    assert "# TYPE cascade_items_total counter" in kept


def test_refresh_outcomes_from_registry_events():
    assert refresh_outcome({"event": "gate", "promoted": True}) == "promoted"
    assert refresh_outcome({"event": "gate", "promoted": False}) == "rejected"
    assert refresh_outcome({"event": "refresh_failed", "error": "x"}) == "failed"
    assert refresh_outcome({"event": "promoted", "version": "v"}) is None  # a manual promotion is no refresh round
