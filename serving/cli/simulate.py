"""``cascade simulate``: the refresh loop's story, end to end on a real service.

1. Distil a seed student from a small slice of the training split (the only data it knows).
   With ``shadow`` (the default) it starts in shadow: its policy escalates everything, so the
   teacher answers round 1 and every item of it is logged. A student that has seen a few hundred
   rows gives a threshold too little evidence: on the validation split it answers the items
   it is surest of with no loss against the teacher, and still loses some of them on test.
   From its first refresh on, the student takes the share its fitted policy earns.
2. Serve the cascade; stream the rest of the training split through it as production traffic,
   in rounds; the unsure items reach the teacher and land in the escalation log.
3. After each round, a refresh trains a candidate on the log (plus a replay of the slice) and
   the gate decides. A candidate that passes goes into shadow, as ``cascade refresh`` puts it by
   default: the running service scores it beside the serving student on the next round's
   traffic and promotes it once it agrees with the teacher no worse and escalates less; online
   control then starts it from that evidence, at the threshold it certifies, not at the top
   (each round reports where control started the student serving at its end). With
   ``promote_at_once`` the service hot-swaps to a passing candidate right after the refresh.
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

6. Outcome feedback (``feedback_rate``): after each round's traffic, the data set's gold labels
   of that share of the round's items (seeded) go to ``POST /v1/feedback``, as clients would
   report outcomes; the round's refresh learns from them (``distill.refresh``). The run sets
   ``$CASCADE_FEEDBACK_TOKEN`` for the service it starts (its own, unless one is set).
7. A teacher systematically wrong on chosen classes (``wrong_classes``): a copy of the teacher
   whose classifier rows are rotated among those classes, so each one's inputs get the next
   one's label, registered as a real model version (``wrong-teacher``) and served as the
   teacher, so serving runs unchanged; the home's teacher is restored when the run ends. Per
   round, the student's and the cascade's recall on those classes on the test split.

Each run logs to fresh directories of its own, ``<home>/simulations/<UTC time>/escalations``,
``.../feedback`` and ``.../traffic`` (whatever the config's ``log.path`` and ``feedback``
paths say), so that it learns from its own traffic alone: a run that read the home's log would
learn a previous run's traffic in its first refresh. A fresh directory rather than a refusal of
a used home: the home keeps the teacher and its cached outputs, which are slow to rebuild and
safe to share, and earlier runs' logs stay there to read.
"""

import copy
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import torch

from distill.backends import HFClassifier
from distill.config import RefreshConfig, StudentSpec, TrainConfig
from distill.data import DataSplits, TextDataset, split_validation
from distill.errors import DataError, ModelError
from distill.feedback import read_feedback
from distill.metadata import ModelMeta, escalation_policy
from distill.pipeline import TeacherCache, data_record, distill_student, fit_student_policy, new_student_meta, register_model
from distill.refresh import refresh
from distill.registry import Registry, new_version_id
from router import CascadeFigures, CostModel, EscalationPolicy, Goal, agreement_target, cascade_figures, parse_goal
from serving.cli import runner
from serving.cli.data import config_registry, config_splits
from serving.config import CascadeConfig, ConfigError
from serving.guards import FEEDBACK_TOKEN_ENV

WRONG_TEACHER_KIND = "wrong-teacher"
MAX_FEEDBACK_ITEMS = 1000  # items per POST /v1/feedback


def _on_test(student: HFClassifier, teacher_probs: np.ndarray, splits: DataSplits, labels: np.ndarray, costs: CostModel,
             classes: np.ndarray) -> tuple[CascadeFigures, dict]:
    """The cascade's figures on the test split, under the student's policy, and the student's and
    the cascade's recall on the items whose true label is one of ``classes`` (None without any)."""
    probs = student.predict_proba(splits.test.texts)
    policy = escalation_policy(student.meta)
    figures = cascade_figures(probs, teacher_probs, labels, policy, costs)
    answers = np.where(policy.escalate_mask(probs), teacher_probs.argmax(1), probs.argmax(1))
    return figures, {"student_recall": class_recall(probs.argmax(1), labels, classes),
                     "cascade_recall": class_recall(answers, labels, classes)}


def class_recall(answers: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> float | None:
    """Share of the items whose true label is in ``classes`` answered with it (None: no such item)."""
    among = np.isin(labels, classes)
    return round(float(np.mean(answers[among] == labels[among])), 4) if among.any() else None


def run_dir(home: Path) -> Path:
    """A new, empty directory for one run's logs: ``<home>/simulations/<UTC time>``."""
    run = home / "simulations" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run.mkdir(parents=True)  # exist_ok=False: never a directory another run wrote to
    return run


def send_traffic(url: str, texts: list[str], batch: int = 64, concurrency: int = 4) -> list[dict]:
    """Every text through the cascade as production traffic (logged for distillation, unlike the
    evaluation traffic of ``cascade bench``), in ``batch``-text requests; the predictions in
    order, each with the ``request_id`` and ``index`` that feedback names it by."""
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    with httpx.Client(timeout=300) as client:

        def send(chunk: list[str]) -> list[dict]:
            response = client.post(f"{url}/v1/classify", json={"inputs": chunk, "options": {"mode": "cascade", "evaluation": False}})
            response.raise_for_status()
            body = response.json()
            return [{**p, "request_id": body["request_id"], "index": i} for i, p in enumerate(body["predictions"])]

        with ThreadPoolExecutor(concurrency) as pool:
            return [p for predictions in pool.map(send, chunks) for p in predictions]


def send_feedback(url: str, token: str, predictions: list[dict], labels: list[str], rate: float, seed: int) -> dict:
    """The true ``labels`` of a seeded share ``rate`` of the answered items, through
    ``POST /v1/feedback``; the service's counts summed (``sent``, ``recorded``, ``unchanged``, ``changed``)."""
    chosen = np.flatnonzero(np.random.default_rng(seed).random(len(predictions)) < rate)
    items = [{"request_id": predictions[i]["request_id"], "index": predictions[i]["index"], "label": labels[i]} for i in chosen]
    counts = {"sent": len(items), "recorded": 0, "unchanged": 0, "changed": 0}
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        for start in range(0, len(items), MAX_FEEDBACK_ITEMS):
            response = client.post(f"{url}/v1/feedback", json={"items": items[start : start + MAX_FEEDBACK_ITEMS]})
            response.raise_for_status()
            for key in ("recorded", "unchanged", "changed"):
                counts[key] += response.json()[key]
    return counts


def pick_wrong_classes(spec: str, labels: list[str]) -> list[str]:
    """The classes ``--wrong-teacher`` names: a count (chosen by a seeded draw) or labels joined by commas; at least two."""
    if spec.strip().isdigit():
        count = int(spec)
        if not 2 <= count <= len(labels):
            raise ConfigError(f"--wrong-teacher: a count of classes is between 2 and {len(labels)}, got {count}")
        return [labels[i] for i in sorted(np.random.default_rng(0).choice(len(labels), count, replace=False))]
    chosen = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    unknown = [c for c in chosen if c not in labels]
    if unknown:
        raise ConfigError(f"--wrong-teacher: unknown class(es) {', '.join(map(repr, unknown))}; the teacher knows {len(labels)} labels, such as {', '.join(labels[:3])}")
    if len(chosen) < 2:
        raise ConfigError("--wrong-teacher: name at least two classes (each one's inputs get the next one's label), or a count")
    return chosen


def wrong_answers(classes: list[str]) -> dict[str, str]:
    """The label the wrong teacher gives each chosen class's inputs: the next class's, in a cycle."""
    return {true: classes[(i + 1) % len(classes)] for i, true in enumerate(classes)}


def make_wrong_teacher(teacher: HFClassifier, classes: list[str]) -> HFClassifier:
    """A copy of ``teacher`` whose last layer onto the labels has its rows rotated among
    ``classes``, so that an input of each gets the next one's label (``wrong_answers``) and every
    other input its usual answer: a systematic mistake, not noise."""
    model = copy.deepcopy(teacher.model)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(teacher.labels)]
    if not heads:
        raise ModelError(f"{teacher.version}: no linear layer onto its {len(teacher.labels)} labels to make wrong")
    rows = list(range(len(teacher.labels)))
    for true, given in wrong_answers(classes).items():
        rows[teacher.labels.index(given)] = teacher.labels.index(true)  # the given label's score is the true one's
    with torch.no_grad():
        head = heads[-1]
        head.weight.copy_(head.weight[rows])
        if head.bias is not None:
            head.bias.copy_(head.bias[rows])
    return HFClassifier(model, teacher.tokenizer, version="wrong", max_length=teacher.max_length)


def honest_teacher(registry: Registry) -> str:
    """The teacher version to start from: the current one, or the one a wrong teacher (a run
    that did not end cleanly) was made from, made current again."""
    current = registry.current("teacher")
    meta = registry.meta("teacher", current)
    if meta.kind == WRONG_TEACHER_KIND and meta.parent:
        registry.promote("teacher", meta.parent, note="simulate: back to the teacher a wrong teacher was made from")
        return meta.parent
    return current


def use_wrong_teacher(registry: Registry, base: str, classes: list[str]) -> str:
    """Make a teacher wrong on ``classes`` (made from ``base``, or the one an earlier run made) current; its version."""
    answers = wrong_answers(classes)
    made = [m for m in registry.versions("teacher") if m.kind == WRONG_TEACHER_KIND and m.parent == base
            and m.train_config.get("wrong_answers") == answers]
    if made:
        registry.promote("teacher", made[-1].version, note=f"simulate: a teacher wrong on {', '.join(classes)}")
        return made[-1].version
    source = registry.meta("teacher", base)
    wrong = make_wrong_teacher(HFClassifier.load(registry.path("teacher", base)), classes)
    meta = ModelMeta(version=new_version_id("teacher"), role="teacher", kind=WRONG_TEACHER_KIND, parent=base, data=source.data,
                     train_config={**source.train_config, "wrong_answers": answers})
    register_model(registry, wrong, meta)
    return meta.version


SHIFTS = ("none", "typos")


def with_typos(texts: list[str], rate: float, seed: int = 0) -> list[str]:
    """Each word of three or more characters gets, with probability ``rate``, one typo: two
    neighbouring characters swapped, one dropped, or one doubled; seeded, so every run sees the
    same stream."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"the typo rate is a probability in [0, 1]; got {rate}")
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
    raise ConfigError(f"unknown shift {shift!r}: expected one of {', '.join(SHIFTS)}")


def served_figures(policy: EscalationPolicy, student_probs: np.ndarray, teacher_top: np.ndarray,
                   threshold: float | None = None) -> tuple[float, float]:
    """(agreement with the teacher, teacher share) of the answers ``policy`` serves at
    ``threshold`` (None: its own), as ``router.cascade_figures`` computes them: an escalated
    item is the teacher's answer, so it agrees."""
    escalate = policy.escalate_mask(student_probs, threshold)
    figures = cascade_figures(student_probs.argmax(1), teacher_top, None, escalate)
    return figures.teacher_agreement, figures.escalation_rate


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


def simulate(config: CascadeConfig, rounds: int, seed_fraction: float, shadow: bool, refresh_epochs: int,
             shift: str = "none", typo_rate: float = 0.2, say: Callable[[str], None] = print,
             feedback_rate: float = 0.0, wrong_teacher: str | None = None, promote_at_once: bool = False) -> dict:
    """Run the simulation (see the module docstring); returns the per-round report."""
    if shift not in SHIFTS:
        raise ConfigError(f"unknown shift {shift!r}: expected one of {', '.join(SHIFTS)}")
    if not 0 <= feedback_rate <= 1:
        raise ConfigError(f"the feedback rate is a share of the traffic in [0, 1]; got {feedback_rate}")
    data = config.data
    full = config_splits(config)
    if full.test is None:
        raise DataError(f"{data}: the simulation reports test accuracy, so the data set needs a test split: a directory with "
                        "train and test files (a single file is split into train and validation only)")
    run = run_dir(config.home)
    log_dir = run / "escalations"
    config = config.model_copy(update={
        "log": config.log.model_copy(update={"path": str(log_dir)}),
        "feedback": config.feedback.model_copy(update={"path": str(run / "feedback"), "traffic_path": str(run / "traffic")}),
    })
    registry = config_registry(config, progress=False)
    base_teacher = honest_teacher(registry)
    labels_known = HFClassifier.load(registry.path("teacher", base_teacher)).labels
    wrong_classes = pick_wrong_classes(wrong_teacher, labels_known) if wrong_teacher else []
    if wrong_classes:
        use_wrong_teacher(registry, base_teacher, wrong_classes)
    try:
        return _simulate(config, registry, full, data, log_dir, rounds, seed_fraction, shadow, refresh_epochs, shift, typo_rate, say,
                         feedback_rate, wrong_classes, promote_at_once)
    finally:
        if registry.current("teacher") != base_teacher:
            registry.promote("teacher", base_teacher, note="simulate: the run is over; the teacher it started from")


def _simulate(config: CascadeConfig, registry: Registry, full: DataSplits, data: str, log_dir: Path, rounds: int, seed_fraction: float,
              shadow: bool, refresh_epochs: int, shift: str, typo_rate: float, say: Callable[[str], None], feedback_rate: float,
              wrong_classes: list[str], promote_at_once: bool) -> dict:
    """The run itself, with the teacher it serves already current (see ``simulate``)."""
    teacher = HFClassifier.load(registry.current_path("teacher"))
    cache = TeacherCache(config.paths().cache)
    rest, seed = split_validation(full.train, seed_fraction, seed=0)
    splits = DataSplits(train=seed, validation=full.validation, test=full.test)
    traffic = shifted_stream(rest.texts, shift, typo_rate)
    say(f"simulate: seed student on {len(seed)} rows ({seed_fraction:.0%} of train); {len(rest)} rows of traffic in {rounds} rounds"
        f"{f' with typos (rate {typo_rate:g} per word)' if shift == 'typos' else ''}; escalation log {log_dir} (fresh for this run)"
        f"{f'; feedback on {feedback_rate:.0%} of traffic' if feedback_rate else ''}"
        f"{f'; teacher {teacher.version} wrong on {wrong_answers(wrong_classes)}' if wrong_classes else ''}")
    spec = StudentSpec()
    student, metrics = distill_student(teacher, seed, spec, cache, progress=False)
    policy = fit_student_policy(student, teacher, splits.validation, cache, config.routing.goal)
    if shadow:  # threshold 1.0 escalates every item (see module docstring)
        policy = replace(policy, threshold=1.0, class_thresholds={}, goal=f"shadow: escalate all until the first refresh (fitted: {policy.goal})")
    register_model(registry, student, new_student_meta(teacher, spec, data_record(data, splits), metrics, policy, parent=None))
    labels = full.test.label_ids(teacher.labels)
    classes = np.array([teacher.labels.index(c) for c in wrong_classes], dtype=np.int64)
    teacher_probs = np.exp(cache.log_probs(teacher, full.test))
    costs = config.routing.costs()
    order = np.random.default_rng(0).permutation(len(rest))
    chunks = np.array_split(order, rounds)
    refresh_config = RefreshConfig(goal=config.routing.goal, train=TrainConfig(epochs=refresh_epochs))
    token = os.environ.setdefault(FEEDBACK_TOKEN_ENV, secrets.token_hex(16))  # the service started next reads it
    url = runner.start(config)
    goal = parse_goal(config.routing.goal)
    report = {"teacher_accuracy": round(float(np.mean(teacher_probs.argmax(1) == labels)), 4),
              "seed_rows": len(seed), "traffic_rows": len(rest), "escalation_log": str(log_dir),
              "shift": shift, "typo_rate": typo_rate if shift == "typos" else None, "goal": str(goal),
              "control": config.routing.control and config.routing.audit_rate > 0, "feedback_rate": feedback_rate,
              "feedback_log": str(config.paths().feedback), "wrong_classes": wrong_classes,
              "wrong_answers": wrong_answers(wrong_classes) if wrong_classes else {},
              "teacher_recall": class_recall(teacher_probs.argmax(1), labels, classes),
              "promotion": "at once" if promote_at_once else "through a shadow", "rounds": []}
    try:
        for number, chunk in enumerate(chunks, start=1):
            current = HFClassifier.load(registry.current_path("student"))
            _wait_for_student(url, current.version)
            test, recall = _on_test(current, teacher_probs, splits, labels, costs, classes)
            texts = [traffic[i] for i in chunk]
            predictions = send_traffic(url, texts)
            share = float(np.mean([p["tier"] == "teacher" for p in predictions]))
            degraded = float(np.mean([p["degraded"] for p in predictions]))  # wanted the teacher, did not get it
            models = _settled_live(url)
            served_by = models["versions"]["student"]  # a shadow promoted during the round serves its end
            versus = _static_and_controlled(HFClassifier.load(registry.path("student", served_by)) if served_by != current.version else current,
                                            teacher, cache, texts, predictions, models, goal)
            sent = (send_feedback(url, token, predictions, [rest.labels[i] for i in chunk], feedback_rate, seed=number)
                    if feedback_rate else {"sent": 0, "recorded": 0, "unchanged": 0, "changed": 0})
            outcome = refresh(registry, config.home, splits, log_dir, refresh_config, data, progress=False,
                              feedback=read_feedback(config.paths().feedback).values(), shadow=not promote_at_once)
            used, gate = outcome["data"]["feedback"], outcome["figures"]
            live = models.get("live") or {}
            row = {"round": number, "student": current.version, "student_at_end": served_by, "traffic": len(chunk),
                   "control_start": live.get("started_from"), "control_start_threshold": live.get("start_threshold"),
                   "teacher_share": round(share, 4),
                   "degraded_share": round(degraded, 4), "test_teacher_share": round(test.escalation_rate, 4),
                   "cascade_accuracy": round(test.accuracy, 4), "cost_per_1000": round(costs.cost_per_1000(share), 1),
                   "refresh_rows": outcome["data"]["escalation_rows"],
                   "refresh": "in shadow" if outcome["shadow"] else "promoted" if outcome["promoted"] else f"rejected ({'; '.join(outcome['reasons'])})",
                   **versus,
                   "wrong_class_student_recall": recall["student_recall"], "wrong_class_cascade_recall": recall["cascade_recall"],
                   "feedback_sent": sent["sent"], "feedback_recorded": sent["recorded"], "refresh_feedback_rows": used["used"],
                   "refresh_feedback_contradicted": used["contradicted_teacher"],
                   "refresh_distrusted_labels": sorted(used["distrusted_teacher_labels"]),
                   "feedback_holdout_items": gate["feedback_items"], "candidate_feedback_accuracy": gate["candidate_feedback_accuracy"],
                   "current_feedback_accuracy": gate["current_feedback_accuracy"]}
            report["rounds"].append(row)
            say(f"round {number}: teacher share {share:.2%}, cascade test accuracy {test.accuracy:.4f}, cost/1000 {row['cost_per_1000']:.0f}; "
                f"agreement static {row['static_agreement']:.4f} / controlled {row['controlled_agreement']:.4f} "
                f"({row['threshold_source']}); refresh {row['refresh']}"
                + (f"; recall on {', '.join(wrong_classes)}: student {recall['student_recall']}, cascade {recall['cascade_recall']}" if wrong_classes else "")
                + (f"; feedback sent {sent['sent']}, refresh used {used['used']} ({used['contradicted_teacher']} contradicted the teacher)"
                   if feedback_rate else ""))
        final = HFClassifier.load(registry.current_path("student"))
        test, recall = _on_test(final, teacher_probs, splits, labels, costs, classes)
        report["final"] = {"student": final.version, "cascade_accuracy": round(test.accuracy, 4),
                           "test_teacher_share": round(test.escalation_rate, 4),
                           "wrong_class_student_recall": recall["student_recall"], "wrong_class_cascade_recall": recall["cascade_recall"]}
    finally:
        runner.stop()
    return report


def _static_and_controlled(student: HFClassifier, teacher: HFClassifier, cache: TeacherCache, texts: list[str],
                           predictions: list[dict], models: dict, goal: Goal) -> dict:
    """The round's figures of the static threshold (the student's fitted policy) and of the
    controlled one (the threshold the service reported at the round's end), for the student
    serving at the round's end, on the round's traffic with the teacher's labels; the agreement
    of the answers served; the goal's target."""
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
