"""``cascade simulate``: the refresh loop's story, end to end on a real service.

1. Distil a seed student from a small slice of the training split (the only data it knows).
   With ``shadow`` (the default) it starts in shadow: its policy escalates everything, so the
   teacher answers round 1 and every item of it is logged. A student that has seen a few hundred
   rows gives a threshold too little evidence: on the validation split it answers the items
   it is surest of with no loss against the teacher, and still loses some of them on test.
   From its first refresh on, the student takes the share its fitted policy earns.
2. Serve the cascade; stream the rest of the training split through it as production traffic,
   in rounds; the unsure items reach the teacher and land in the escalation log.
3. After each round, a refresh trains a candidate on the log (plus a replay of the slice),
   the gate decides, and the running service hot-swaps to a promoted student.
4. Per round: the teacher's share of that round's traffic, the cost per 1,000 requests, the
   logged rows the round's refresh learned from, and, with the student that served the round,
   the cascade's accuracy and teacher share on the test split (the same items every round, so
   that share moves with the student alone, not with the traffic).
5. Static against controlled, per round, on the round's own traffic with the teacher's labels
   (computed here, through the teacher cache): the agreement with the teacher and the teacher
   share of the student's fitted policy (the static threshold, as with control off) and of the
   threshold the service reported at the round's end (``threshold_source`` "live" once online
   control has stepped), beside the agreement of the answers actually served and the goal's
   agreement target. ``shift`` makes the traffic differ from validation: ``typos`` gives words
   seeded typos (letters swapped, dropped or doubled), as users type them.

Each run logs to a fresh directory of its own, ``<home>/simulations/<UTC time>/escalations``
(whatever the config's ``log.path`` says), so that it learns from its own traffic alone: a run
that read the home's log would learn a previous run's traffic in its first refresh. A fresh
directory rather than a refusal of a used home: the home keeps the teacher and its cached
outputs, which are slow to rebuild and safe to share, and earlier runs' logs stay there to read.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

from distill.backends import HFClassifier
from distill.bootstrap import ensure_models
from distill.config import RefreshConfig, StudentSpec, TrainConfig
from distill.data import DataSplits, TextDataset, load_splits, split_validation
from distill.metadata import escalation_policy
from distill.pipeline import TeacherCache, data_record, distill_student, fit_student_policy, new_student_meta, register_model
from distill.refresh import refresh
from router import CascadeFigures, CostModel, EscalationPolicy, Goal, agreement_target, cascade_figures, parse_goal
from serving.cli import runner
from serving.config import CascadeConfig


def _on_test(student: HFClassifier, teacher_probs: np.ndarray, splits: DataSplits, labels: np.ndarray, costs: CostModel) -> CascadeFigures:
    """The cascade's figures on the test split, under the student's policy."""
    probs = student.predict_proba(splits.test.texts)
    return cascade_figures(probs, teacher_probs, labels, escalation_policy(student.meta), costs)


def run_log_dir(home: Path) -> Path:
    """A new, empty escalation log directory for one run: ``<home>/simulations/<UTC time>/escalations``."""
    run = home / "simulations" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run.mkdir(parents=True)  # exist_ok=False: never a directory another run wrote to
    return run / "escalations"


def send_traffic(url: str, texts: list[str], batch: int = 64, concurrency: int = 4) -> list[dict]:
    """Every text through the cascade as production traffic (logged for distillation, unlike the
    evaluation traffic of ``cascade bench``), in ``batch``-text requests; the predictions in order."""
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    with httpx.Client(timeout=300) as client:

        def send(chunk: list[str]) -> list[dict]:
            response = client.post(f"{url}/v1/classify", json={"inputs": chunk, "options": {"mode": "cascade", "evaluation": False}})
            response.raise_for_status()
            return response.json()["predictions"]

        with ThreadPoolExecutor(concurrency) as pool:
            return [p for predictions in pool.map(send, chunks) for p in predictions]


SHIFTS = ("none", "typos")


def with_typos(texts: list[str], rate: float, seed: int = 0) -> list[str]:
    """Each word of three or more characters gets, with probability ``rate``, one typo: two
    neighbouring characters swapped, one dropped, or one doubled; seeded, so every run sees the
    same stream."""
    if not 0 <= rate <= 1:
        raise ValueError(f"the typo rate is a probability in [0, 1]; got {rate}")
    rng = np.random.default_rng(seed)
    shifted = []
    for text in texts:
        words = text.split(" ")
        for k, word in enumerate(words):
            if len(word) >= 3 and rng.random() < rate:
                i, edit = int(rng.integers(len(word) - 1)), int(rng.integers(3))
                words[k] = (word[:i] + word[i + 1] + word[i] + word[i + 2:], word[:i] + word[i + 1:], word[:i + 1] + word[i:])[edit]
        shifted.append(" ".join(words))
    return shifted


def shifted_stream(texts: list[str], shift: str, typo_rate: float) -> list[str]:
    """The traffic as it is sent: ``texts`` unchanged (``none``) or with typos (``typos``)."""
    if shift == "none":
        return list(texts)
    if shift == "typos":
        return with_typos(texts, typo_rate)
    raise ValueError(f"unknown shift {shift!r}: expected one of {', '.join(SHIFTS)}")


def served_figures(policy: EscalationPolicy, student_probs: np.ndarray, teacher_top: np.ndarray,
                   threshold: float | None = None) -> tuple[float, float]:
    """(agreement with the teacher, teacher share) of the answers ``policy`` serves at
    ``threshold`` (None: its own): an escalated item is the teacher's answer, so it agrees."""
    escalate = policy.escalate_mask(student_probs, threshold)
    agreed = escalate | (student_probs.argmax(1) == teacher_top)
    return float(agreed.mean()), float(escalate.mean())


def _settled_live(url: str, sync_every_s: float = 1.0) -> dict:
    """``/v1/models`` once the round's last evidence has reached online control: a replica merges
    its evidence at most once per ``sync_every_s`` (on a request), so wait that long, then send
    one student-only evaluation request (no evidence, never logged) to make it merge."""
    time.sleep(sync_every_s + 0.1)
    httpx.post(f"{url}/v1/classify", json={"inputs": ["sync"], "options": {"mode": "student", "evaluation": True}},
               timeout=60).raise_for_status()
    return httpx.get(f"{url}/v1/models", timeout=30).json()


def _wait_for_student(url: str, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v1/models", timeout=30).json()["versions"]["student"] != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not swap to {version} within {timeout_s:.0f} s")
        time.sleep(0.5)


def simulate(config: CascadeConfig, data: str, rounds: int, seed_fraction: float, shadow: bool, refresh_epochs: int,
             shift: str = "none", typo_rate: float = 0.2, say: Callable[[str], None] = print) -> dict:
    """Run the simulation (see the module docstring); returns the per-round report."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}: expected one of {', '.join(SHIFTS)}")
    full = load_splits(data)
    if full.test is None:
        raise ValueError("the simulation reports test accuracy: the data set needs a test split")
    log_dir = run_log_dir(config.home)
    config = config.model_copy(update={"log": config.log.model_copy(update={"path": str(log_dir)})})
    registry = ensure_models(config.home, data, progress=False)
    teacher = HFClassifier.load(registry.current_path("teacher"))
    cache = TeacherCache(config.home / "cache")
    rest, seed = split_validation(full.train, seed_fraction, seed=0)
    splits = DataSplits(train=seed, validation=full.validation, test=full.test)
    traffic = shifted_stream(rest.texts, shift, typo_rate)
    say(f"simulate: seed student on {len(seed)} rows ({seed_fraction:.0%} of train); {len(rest)} rows of traffic in {rounds} rounds"
        f"{f' with typos (rate {typo_rate:g} per word)' if shift == 'typos' else ''}; escalation log {log_dir} (fresh for this run)")
    spec = StudentSpec()
    student, metrics = distill_student(teacher, seed, spec, cache, progress=False)
    policy = fit_student_policy(student, teacher, splits.validation, cache, config.routing.goal)
    if shadow:  # threshold 1.0 escalates every item (see module docstring)
        policy = replace(policy, threshold=1.0, class_thresholds={}, goal=f"shadow: escalate all until the first refresh (fitted: {policy.goal})")
    register_model(registry, student, new_student_meta(teacher, spec, data_record(data, splits), metrics, policy, parent=None))
    labels = full.test.label_ids(teacher.labels)
    teacher_probs = np.exp(cache.log_probs(teacher, full.test))
    costs = config.routing.costs()
    order = np.random.default_rng(0).permutation(len(rest))
    chunks = np.array_split(order, rounds)
    refresh_config = RefreshConfig(goal=config.routing.goal, train=TrainConfig(epochs=refresh_epochs))
    url = runner.start(config)
    goal = parse_goal(config.routing.goal)
    report = {"teacher_accuracy": round(float(np.mean(teacher_probs.argmax(1) == labels)), 4),
              "seed_rows": len(seed), "traffic_rows": len(rest), "escalation_log": str(log_dir),
              "shift": shift, "typo_rate": typo_rate if shift == "typos" else None, "goal": str(goal),
              "control": config.routing.control and config.routing.audit_rate > 0, "rounds": []}
    try:
        for number, chunk in enumerate(chunks, start=1):
            current = HFClassifier.load(registry.current_path("student"))
            _wait_for_student(url, current.version)
            test = _on_test(current, teacher_probs, splits, labels, costs)
            texts = [traffic[i] for i in chunk]
            predictions = send_traffic(url, texts)
            share = float(np.mean([p["tier"] == "teacher" for p in predictions]))
            degraded = float(np.mean([p["degraded"] for p in predictions]))  # wanted the teacher, did not get it
            versus = _static_and_controlled(current, teacher, cache, texts, predictions, _settled_live(url), goal)
            outcome = refresh(registry, config.home, splits, log_dir, refresh_config, data, progress=False)
            row = {"round": number, "student": current.version, "traffic": len(chunk), "teacher_share": round(share, 4),
                   "degraded_share": round(degraded, 4), "test_teacher_share": round(test.escalation_rate, 4),
                   "cascade_accuracy": round(test.accuracy, 4), "cost_per_1000": round(costs.cost_per_1000(share), 1),
                   "refresh_rows": outcome["data"]["escalation_rows"],
                   "refresh": "promoted" if outcome["promoted"] else f"rejected ({'; '.join(outcome['reasons'])})", **versus}
            report["rounds"].append(row)
            say(f"round {number}: teacher share {share:.2%}, cascade test accuracy {test.accuracy:.4f}, cost/1000 {row['cost_per_1000']:.0f}; "
                f"agreement static {row['static_agreement']:.4f} / controlled {row['controlled_agreement']:.4f} "
                f"({row['threshold_source']}); refresh {row['refresh']}")
    finally:
        runner.stop()
    return report


def _static_and_controlled(student: HFClassifier, teacher: HFClassifier, cache: TeacherCache, texts: list[str],
                           predictions: list[dict], models: dict, goal: Goal) -> dict:
    """The round's figures of the static threshold (the student's fitted policy) and of the
    controlled one (the threshold the service reported at the round's end), on the round's
    traffic with the teacher's labels; the agreement of the answers served; the goal's target."""
    if models["versions"]["student"] != student.version:
        raise RuntimeError(f"the service swapped to {models['versions']['student']} during a round served by {student.version}")
    policy = escalation_policy(student.meta)
    round_data = TextDataset(texts, None, list(teacher.labels), name="simulate-round")
    teacher_top = cache.log_probs(teacher, round_data).argmax(1)
    probs = student.predict_proba(texts)
    static_agreement, static_share = served_figures(policy, probs, teacher_top)
    override = None if models["threshold_source"] == "fitted" else models["threshold"]  # fitted: class thresholds too, as served
    controlled_agreement, controlled_share = served_figures(policy, probs, teacher_top, override)
    served = np.mean([p["label"] == teacher.labels[t] for p, t in zip(predictions, teacher_top)])
    target = agreement_target(goal, policy.validation)
    live = models.get("live") or {}
    return {"goal_target": None if target is None else round(target, 4),
            "static_threshold": policy.threshold, "static_agreement": round(static_agreement, 4),
            "static_teacher_share": round(static_share, 4),
            "controlled_threshold": models["threshold"], "threshold_source": models["threshold_source"],
            "controlled_agreement": round(controlled_agreement, 4), "controlled_teacher_share": round(controlled_share, 4),
            "served_agreement": round(float(served), 4),
            "live_estimate": live.get("estimate"), "live_bound": live.get("bound")}


def plot_rounds(report: dict, path: Path) -> None:
    """Two panels: teacher share and cascade accuracy per round, with the teacher's accuracy for
    reference; and the live agreement of the static and the controlled threshold against the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    fig, (share_ax, agreement_ax) = plt.subplots(2, 1, figsize=(8, 8), dpi=120)
    share_ax.plot(rounds, [100 * r["teacher_share"] for r in report["rounds"]], "o-", color="tab:orange", label="teacher share of traffic (%)")
    share_ax.plot(rounds, [100 * r["test_teacher_share"] for r in report["rounds"]], "o--", color="tab:orange", alpha=0.5,
                  label="teacher share on test (%)")
    share_ax.set_xlabel("round (traffic streamed, then a refresh)")
    share_ax.set_ylabel("teacher share of traffic (%)", color="tab:orange")
    share_ax.set_xticks(rounds)
    accuracy_ax = share_ax.twinx()
    accuracy_ax.plot(rounds, [r["cascade_accuracy"] for r in report["rounds"]], "s-", color="tab:blue", label="cascade test accuracy")
    accuracy_ax.axhline(report["teacher_accuracy"], color="tab:red", linestyle=":", label=f"teacher alone ({report['teacher_accuracy']:.2%})")
    accuracy_ax.set_ylabel("cascade accuracy on test", color="tab:blue")
    lines = share_ax.get_legend_handles_labels()[0] + accuracy_ax.get_legend_handles_labels()[0]
    labels = share_ax.get_legend_handles_labels()[1] + accuracy_ax.get_legend_handles_labels()[1]
    accuracy_ax.legend(lines, labels, loc="upper center", fontsize=8)  # on the top axes, so no line is drawn over it
    share_ax.set_title("cascade simulate: the student learns from the teacher's escalations")
    share_ax.grid(alpha=0.3)
    rows = report["rounds"]
    for key, style, name in (("static_agreement", "o--", "static threshold"), ("controlled_agreement", "s-", "controlled threshold"),
                             ("served_agreement", "^:", "answers served")):
        agreement_ax.plot(rounds, [r[key] for r in rows], style, label=name)
    targets = [r["goal_target"] for r in rows]
    if all(t is not None for t in targets):
        agreement_ax.plot(rounds, targets, "r:", marker="_", markersize=20, drawstyle="steps-mid", label=f"goal ({report['goal']})")
    agreement_ax.set_xlabel("round")
    agreement_ax.set_ylabel("agreement with the teacher, round's traffic")
    agreement_ax.set_xticks(rounds)
    agreement_ax.set_title(f"live agreement, stream shift: {report['shift']}")
    agreement_ax.legend(fontsize=8)
    agreement_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
