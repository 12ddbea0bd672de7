"""A model behind a batching queue: the body of the student and teacher deployments, and of
the student when it runs inside the ingress process (``placement: ingress``)."""

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
import torch
from ray import serve

from distill.backends import HFClassifier
from serving.remote import RemoteClassifier, RemoteTeacherSettings, model_labels
from serving.cascade import ModelOutput
from serving.compose import open_registry, open_routing
from serving.stores import SYNC_EVERY_S
from serving.config import ModelDeploymentConfig, Paths
from serving.metrics import ModelInfo, Recorder

logger = logging.getLogger("cascade")
DEFAULTS = ModelDeploymentConfig()  # batching and polling until configure() says otherwise
AUTO_WAIT_SHARE = 0.5  # with batch_wait_timeout_s "auto": wait up to this share of a batch's measured time ...
AUTO_WAIT_MAX_S = 0.05  # ... and never longer than this
BATCH_TIME_SMOOTHING = 0.2  # weight of the newest batch in the moving average of batch time


def auto_wait_s(batch_s: float) -> float:
    """How long an idle model server waits for more texts before a batch runs: a share of what
    one batch costs, so a text waits at most that share longer, and texts of concurrent requests
    (each with a few unsure texts) share one forward pass instead of paying one each.

    >>> auto_wait_s(0.02), auto_wait_s(1.0)
    (0.01, 0.05)
    """
    return min(AUTO_WAIT_MAX_S, AUTO_WAIT_SHARE * batch_s)


def texts_in(calls: list[list]) -> int:
    """Batch size in items rather than calls, for ``serve.batch``'s ``batch_size_fn``."""
    return sum(len(call) for call in calls)


class BatchedModel:
    """Serves one model, batching texts from concurrent requests into one forward pass.

    ``configure({"model": ..., "max_batch_size": ..., "batch_wait_timeout_s": ...})`` loads a
    new model beside the old one and swaps it in, so requests never fail during a swap. A wait
    of ``"auto"`` follows the measured batch time (``auto_wait_s``), so a teacher gathers the
    few unsure texts of concurrent requests into one forward pass. With
    ``model`` None the server follows the registry's ``current`` pointer: every
    ``poll_registry_s`` seconds it checks the pointer and hot-swaps to a newly promoted (or
    rolled-back) version, in every replica, with no restart and no coordination; and within
    ``SYNC_EVERY_S`` of an admin reload (a bumped ``reload_generation`` in the shared state),
    whatever ``poll_registry_s`` is.
    """

    def __init__(self, role: str, paths: Paths, device: str | None = None, threads: int | None = None, inline: bool = False):
        self.role = role
        # a sub-millisecond model (the student inside the ingress) runs on the event loop: a hop to a
        # worker thread, and the GIL hand-offs while the loop is busy, cost more than its forward pass
        self.inline = inline
        self.registry = open_registry(paths)
        self.device = device
        if threads:
            torch.set_num_threads(threads)
        self.model: HFClassifier | RemoteClassifier | None = None
        self.source: str | None = None
        self.max_batch_size = DEFAULTS.max_batch_size
        self.follow_current = False
        self.poll_registry_s = DEFAULTS.poll_registry_s
        self._watcher: asyncio.Task | None = None
        self._swap_lock = threading.Lock()  # configure() and the registry watcher never interleave
        self.model_info = ModelInfo(role)
        self.auto_wait = False  # batch_wait_timeout_s "auto": derived from the measured batch time
        self.batch_s: float | None = None  # moving average of one batch's forward pass, seconds
        self.batch_metrics = Recorder("cascade_teacher_batch_texts") if role == "teacher" else None
        self.shared = open_routing(paths, check_every_s=0)
        self._reload_generation = self.shared.read().reload_generation

    def configure(self, user_config: dict[str, Any]) -> None:
        """Apply a model reference (or a ``remote`` teacher's settings) and batching settings,
        loading the model if it changed."""
        remote = user_config.get("remote")
        self.follow_current = user_config.get("model") is None and remote is None
        self.poll_registry_s = float(user_config.get("poll_registry_s", self.poll_registry_s))
        if remote is not None:
            self._use_remote(RemoteTeacherSettings.model_validate(remote))
        else:
            self._swap_to(self.registry.resolve(self.role, user_config.get("model")))
        self.max_batch_size = int(user_config.get("max_batch_size", self.max_batch_size))
        self._batched.set_max_batch_size(self.max_batch_size)
        wait = user_config.get("batch_wait_timeout_s", DEFAULTS.batch_wait_timeout_s)
        self.auto_wait = wait == "auto"
        self._batched.set_batch_wait_timeout_s(auto_wait_s(self.batch_s or 0.0) if self.auto_wait else float(wait))

    def _swap_to(self, source: str | None, following: bool = False) -> None:
        """Load ``source`` (None: the registry's current version) if it is not the model in use,
        warm it up, then swap references. A model with other labels is refused: the ingress
        routes with the label list it started with."""
        with self._swap_lock:
            if following and not self.follow_current:
                return  # pinned to a version meanwhile
            if source is None:
                source = self.registry.resolve(self.role, None)
            if source == self.source:
                return
            model = HFClassifier.load(source, device=self.device)
            if self.model is not None and model.labels != self.model.labels:
                raise ValueError(f"{model.version} has other labels than {self.model.version}; not swapped")
            model.predict_proba(["warm up"])
            old, self.model, self.source = self.model, model, source
            self._retire(old)  # after the swap: new batches already take the new model
            self.model_info.serving(model.version)
            logger.info("%s now serving %s", self.role, model.version)

    def _use_remote(self, settings: RemoteTeacherSettings) -> None:
        """Serve a black-box model over HTTP. Its labels are the configured ones, else those of
        the registry's current student (the cascade needs one label list). No warm-up call: a
        remote model that is down at start-up degrades escalations to the student, it does not
        stop the application."""
        with self._swap_lock:
            if self.source == settings.model_dump_json():
                return
            labels = settings.labels or model_labels(self.registry.current_path("student"))
            if self.model is not None and labels != self.model.labels:
                raise ValueError(f"{settings.version()} has other labels than {self.model.version}; not swapped")
            old, self.model, self.source = self.model, RemoteClassifier(settings, labels), settings.model_dump_json()
            self._retire(old)
            logger.info("%s now serving %s", self.role, self.model.version)

    @staticmethod
    def _retire(model: HFClassifier | RemoteClassifier | None) -> None:
        """Close a swapped-out remote model's HTTP client (once the batch using it, if any,
        ends); a local model holds nothing to close."""
        if isinstance(model, RemoteClassifier):
            model.close()

    async def _follow_registry(self) -> None:
        """Hot-swap when the registry's current pointer moves: checked every ``poll_registry_s``
        (0: never), and at once when an admin reload was requested."""
        last_poll = time.monotonic()
        while self.follow_current:
            await asyncio.sleep(min(self.poll_registry_s, SYNC_EVERY_S) if self.poll_registry_s > 0 else SYNC_EVERY_S)
            generation = self.shared.read().reload_generation
            polling = self.poll_registry_s > 0 and time.monotonic() - last_poll >= self.poll_registry_s
            if generation == self._reload_generation and not polling:
                continue
            self._reload_generation, last_poll = generation, time.monotonic()
            try:
                await asyncio.to_thread(self._swap_to, None, True)
            except Exception as err:  # a bad new version must not take the serving one down
                logger.error("%s: cannot swap to the registry's current version: %r", self.role, err)

    async def predict(self, texts: list[str]) -> ModelOutput:
        """Probabilities for ``texts`` (split into batch-sized calls when longer than a batch)."""
        if self.follow_current and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._follow_registry())
        chunks = [texts[i : i + self.max_batch_size] for i in range(0, len(texts), self.max_batch_size)]
        outputs = await asyncio.gather(*(self._batched(chunk) for chunk in chunks))
        if len(outputs) == 1:
            return outputs[0]
        if len({o.version for o in outputs}) > 1:  # a swap fell between the chunks: answer with one version
            return await self.predict(texts)
        first = outputs[0]
        return ModelOutput(np.concatenate([o.probs for o in outputs]), first.version, first.policy, first.label_only)

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s, batch_size_fn=texts_in)
    async def _batched(self, calls: list[list[str]]) -> list[ModelOutput]:
        model = self.model  # one model for the whole batch, even if a swap happens meanwhile
        flat = [text for call in calls for text in call]
        start = time.perf_counter()
        probs = model.predict_proba(flat) if self.inline else await asyncio.to_thread(model.predict_proba, flat)
        self._measured(len(flat), time.perf_counter() - start)
        policy = model.meta.policy if model.meta else None
        out, start = [], 0
        for call in calls:
            out.append(ModelOutput(probs[start : start + len(call)], model.version, policy, model.label_only))
            start += len(call)
        return out

    def _measured(self, texts: int, seconds: float) -> None:
        """Record one batch: its size (teacher) and time, which sets the next wait when it is auto."""
        if self.batch_metrics is not None:
            self.batch_metrics.observe("cascade_teacher_batch_texts", texts)
        self.batch_s = seconds if self.batch_s is None else (1 - BATCH_TIME_SMOOTHING) * self.batch_s + BATCH_TIME_SMOOTHING * seconds
        if self.auto_wait:
            self._batched.set_batch_wait_timeout_s(auto_wait_s(self.batch_s))

    async def reload(self) -> str:
        """Re-read the registry's current pointer now (when following it) and swap if it moved;
        returns the version in use."""
        await asyncio.to_thread(self._swap_to, None, True)
        return self.model.version

    def info(self) -> dict:
        """Labels, version and (for a student) the fitted policy of the loaded model."""
        meta = self.model.meta
        return {"labels": self.model.labels, "version": self.model.version, "policy": meta.policy if meta else None}
