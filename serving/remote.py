"""A black-box teacher over HTTP: the same ``Classifier`` interface as ``HFClassifier``, backed
by a remote model.

Two kinds of endpoint:

- ``openai``: any OpenAI-compatible chat-completions endpoint, called through the official
  ``openai`` client. The model is shown the label list and asked for exactly one label; its
  answer is mapped back to a label. It gives a label, never probabilities, so its output is a
  one-hot row and ``label_only`` is True: the escalation log says so, and the refresh loop
  then trains label-only (``losses.label_only_loss``) rather than pretending to have soft labels.
- ``json``: a generic endpoint that takes ``{"texts": [...], "labels": [...]}`` and returns
  ``{"probabilities": [[...], ...]}``, one row per text in the order of ``labels``: real soft labels.

Every HTTP call has a timeout; a timeout, a connection error, a 429 or a 5xx is retried with
exponential backoff (``backoff_s * 2**attempt``, plus up to 25 % jitter); at most
``concurrency`` calls are in flight at once, across all callers of one teacher.

>>> teacher = RemoteClassifier(RemoteTeacherSettings(kind="openai", url="http://llm:8000/v1", model="m"),
...                            ["alarm", "music"])        # doctest: +SKIP
>>> teacher.predict_proba(["play some jazz"])             # doctest: +SKIP
array([[0., 1.]], dtype=float32)
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal, Sequence, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill.errors import DistillError, ModelError

T = TypeVar("T")

SYSTEM_PROMPT = (
    "You classify a user's message into exactly one of these labels:\n{labels}\n"
    "Answer with the label alone, spelled exactly as listed, and nothing else."
)
CORRECTION = "'{answer}' is not one of the labels. Answer with exactly one label from the list, and nothing else."


class RemoteTeacherError(DistillError):
    """The remote teacher failed: out of retries, a non-retryable HTTP error, or an answer
    that names no label."""


class RemoteTeacherSettings(BaseModel):
    """How to reach a remote teacher (``teacher.remote`` in the serving config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "json"]  # openai: chat completions, label only; json: probabilities
    url: str = Field(min_length=1)  # openai: the API base (…/v1); json: the endpoint itself
    model: str | None = None  # the model name sent to an openai endpoint (required there)
    api_key_env: str | None = None  # environment variable holding the API key (sent as a bearer token)
    labels: list[str] | None = None  # the label list, in the student's order; None: the registry's current student's labels
    timeout_s: float = Field(4.0, gt=0)  # per HTTP call (the cascade's routing.teacher_timeout_s bounds the whole escalation)
    retries: int = Field(3, ge=0)  # extra attempts after a retryable failure
    backoff_s: float = Field(0.5, ge=0)  # first retry delay; doubles with each attempt
    concurrency: int = Field(8, ge=1)  # HTTP calls in flight at once, at most

    @model_validator(mode="after")
    def _openai_needs_a_model(self) -> "RemoteTeacherSettings":
        if self.kind == "openai" and not self.model:
            raise ValueError("kind 'openai' needs `model`: the model name the endpoint serves")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: each label must appear once")
        return self

    def version(self) -> str:
        """A remote model has no registry version: ``remote:<model>@<host>``."""
        parts = urlsplit(self.url)
        return f"remote:{self.model or 'json'}@{parts.netloc or self.url}"

    def api_key(self) -> str | None:
        """The key from ``api_key_env``; a named but unset variable is an error, not a silent anonymous call."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelError(f"remote teacher: environment variable {self.api_key_env} (api_key_env) is not set")
        return key


class _Retryable(Exception):
    """A failure worth another attempt (timeout, connection error, 429, 5xx, unusable answer)."""


def _words(text: str) -> str:
    """Lower case, each run of other characters than letters and digits as one space."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def parse_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label a model's free-text ``answer`` names, or None when it names none or several.

    Exact match first, then the same ignoring case, punctuation and ``_``/``-`` versus spaces
    (also after a "label:" or "the answer is" prefix), then the one label that occurs as whole
    words in the answer; the longest wins when one label contains another ("card" inside
    "card arrival").
    """
    if answer.strip() in labels:
        return answer.strip()
    by_form = {_words(label): label for label in labels}
    spoken = _words(answer)
    for candidate in (spoken, re.sub(r"^(the )?(label|answer|intent|category)( is)? ", "", spoken)):
        if candidate in by_form:
            return by_form[candidate]
    found = [form for form in by_form if form and f" {form} " in f" {spoken} "]
    found = [form for form in found if not any(form != other and f" {form} " in f" {other} " for other in found)]
    return by_form[found[0]] if len(found) == 1 else None


def model_labels(directory: str | Path) -> list[str]:
    """The label list in a Hugging Face model directory's ``config.json`` (without loading weights)."""
    config = Path(directory) / "config.json"
    try:
        id2label = json.loads(config.read_text())["id2label"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot read the label list from {config}: {err}") from err
    return [str(id2label[str(i)]) for i in range(len(id2label))]


class RemoteClassifier:
    """A remote model behind the ``Classifier`` interface (see the module docstring)."""

    meta = None  # no cascade.json: a remote model carries no fitted policy

    def __init__(self, settings: RemoteTeacherSettings, labels: Sequence[str], sleep: Callable[[float], None] = time.sleep):
        if not labels:
            raise ModelError("remote teacher: an empty label list")
        self.settings = settings
        self.labels = list(labels)
        self.version = settings.version()
        self.label_only = settings.kind == "openai"
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="remote-teacher")
        self._http: httpx.Client | None = None
        self._openai = None
        self._calls = 0  # predict_proba calls in progress; close() waits for them
        self._closing = False
        self._state = threading.Lock()
        key = settings.api_key()
        if settings.kind == "openai":
            from openai import OpenAI  # imported here: it takes seconds, and only this kind needs it

            # the client's own retries are off: this class retries, with its own backoff and budget
            self._openai = OpenAI(base_url=settings.url, api_key=key or "unused", timeout=settings.timeout_s, max_retries=0)
        else:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._http = httpx.Client(timeout=settings.timeout_s, headers=headers)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)): one-hot rows for an ``openai``
        teacher (one call per text, ``concurrency`` at a time), the endpoint's rows for ``json``."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        with self._state:
            if self._closing:
                raise RemoteTeacherError(f"remote teacher {self.version}: closed (swapped out)")
            self._calls += 1
        try:
            if self._openai is not None:
                answers = list(self._pool.map(self._label_of, texts))
                probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
                probs[np.arange(len(texts)), [self.labels.index(a) for a in answers]] = 1.0
                return probs
            return self._with_retries(lambda: self._json_probabilities(list(texts)))
        finally:
            with self._state:
                self._calls -= 1
                last = self._closing and self._calls == 0
            if last:
                self._release()

    def _with_retries(self, call: Callable[[], T]) -> T:
        """Run ``call()`` inside a concurrency slot, retrying retryable failures with
        exponential backoff; the last failure becomes a ``RemoteTeacherError``."""
        for attempt in itertools.count():
            try:
                with self._slots:
                    return call()
            except _Retryable as err:
                if attempt >= self.settings.retries:
                    raise RemoteTeacherError(f"remote teacher {self.version}: {err} (after {attempt + 1} attempt(s))") from err
            # the wait holds no slot: other calls proceed meanwhile
            self._sleep(self.settings.backoff_s * 2**attempt * random.uniform(1.0, 1.25))

    def _label_of(self, text: str) -> str:
        """One chat completion per text; an answer naming no label is asked again, with a correction."""
        system = SYSTEM_PROMPT.format(labels="\n".join(self.labels))
        last_answer: list[str] = []

        def ask() -> str:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
            if last_answer:
                messages += [{"role": "assistant", "content": last_answer[0]},
                             {"role": "user", "content": CORRECTION.format(answer=last_answer[0])}]
            answer = self._chat(messages)
            label = parse_label(answer, self.labels)
            if label is None:
                last_answer[:] = [answer]
                raise _Retryable(f"answered {answer[:200]!r}, which names none (or several) of the {len(self.labels)} labels")
            return label

        return self._with_retries(ask)

    def _chat(self, messages: list[dict]) -> str:
        import openai  # already loaded by __init__

        try:
            completion = self._openai.chat.completions.create(model=self.settings.model, messages=messages, temperature=0)
        except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from err
        except openai.APIStatusError as err:  # 4xx other than 429: retrying will not help
            raise RemoteTeacherError(f"remote teacher {self.version}: HTTP {err.status_code}: {err.message}") from err
        if not completion.choices:
            raise _Retryable("a completion with no choices")
        return completion.choices[0].message.content or ""

    def _json_probabilities(self, texts: list[str]) -> np.ndarray:
        try:
            response = self._http.post(self.settings.url, json={"texts": texts, "labels": self.labels})
        except httpx.TransportError as err:  # timeouts and connection errors
            raise _Retryable(f"{type(err).__name__}: {err}") from err
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise RemoteTeacherError(f"remote teacher {self.version}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            probs = np.asarray(response.json()["probabilities"], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as err:
            raise RemoteTeacherError(f"remote teacher {self.version}: expected {{\"probabilities\": [[...], ...]}}: {err}") from err
        if probs.shape != (len(texts), len(self.labels)) or not np.isfinite(probs).all() or (probs < 0).any():
            raise RemoteTeacherError(
                f"remote teacher {self.version}: expected {len(texts)} rows of {len(self.labels)} non-negative "
                f"probabilities, got shape {probs.shape}"
            )
        totals = probs.sum(axis=1, keepdims=True)
        if (totals <= 0).any():
            raise RemoteTeacherError(f"remote teacher {self.version}: a row of probabilities sums to zero")
        return probs / totals

    def close(self) -> None:
        """Refuse new calls and release the HTTP connections and worker threads once the calls
        in progress end (at once when there are none): a swapped-out teacher may still be
        answering a batch."""
        with self._state:
            self._closing = True
            idle = self._calls == 0
        if idle:
            self._release()

    @property
    def closed(self) -> bool:
        """Whether close() was called (its resources go once the calls in progress end)."""
        return self._closing

    def _release(self) -> None:
        self._pool.shutdown(wait=False)
        if self._http is not None:
            self._http.close()
        if self._openai is not None:
            self._openai.close()
