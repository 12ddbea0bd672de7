"""Model backends behind one interface: probabilities for a batch of texts, labels, a version.

Every local model (the embedded teacher, both students, any hub classifier) is a Hugging Face
``AutoModelForSequenceClassification`` directory, so one class, ``HFClassifier``, serves them
all: batched, ``inference_mode``, CUDA with half precision when a GPU is present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.architectures import register_architectures
from distill.config import TrainConfig
from distill.errors import ModelError
from distill.metadata import ModelMeta, read_meta

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
FOREIGN_MAX_LENGTH = 512
CPU_PASS_TEXTS = 16  # texts per forward pass on a CPU (see HFClassifier.logits)
"""The most word pieces kept per text for a model without the project's metadata: tokenizers
that do not know their limit report a huge ``model_max_length``, and past 512 most encoders
have no position embeddings anyway."""


class Classifier(Protocol):
    """What the cascade needs of a model."""

    labels: list[str]
    version: str
    label_only: bool  # True: rows are the model's top label, one-hot (a black-box teacher), not probabilities

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)), rows summing to one."""
        ...


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def refuse_pickle(directory: Path) -> None:
    """Raise if a model directory holds pickle-based weights and no safetensors."""
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        reason = f"only pickle-based weights ({', '.join(pickled)})" if pickled else "no model.safetensors"
        raise ModelError(f"{directory}: {reason}; this project loads safetensors only")


def _fast_encoder(tokenizer, max_length: int) -> tokenizers.Tokenizer | None:
    """A copy of a fast tokenizer's Rust core, padding and truncating the way ``encode`` asks the
    wrapper to. Calling it directly skips the wrapper's per-call Python work, which costs about as
    much as a small student's whole forward pass. None for a slow tokenizer or one without padding."""
    if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token_id is None:
        return None
    core = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.enable_truncation(max_length, direction=tokenizer.truncation_side)
    core.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    return core


def inference_max_length(meta: ModelMeta | None, tokenizer) -> int:
    """Word pieces kept per text at inference: the truncation the model was trained with (its
    metadata's ``train_config.max_length``), else its tokenizer's ``model_max_length`` capped at
    ``FOREIGN_MAX_LENGTH`` (a foreign Hugging Face model)."""
    trained = meta.train_config.get("max_length") if meta else None
    if trained is not None:
        if not isinstance(trained, int) or trained < 1:
            raise ModelError(f"{meta.version}: train_config.max_length must be a whole number >= 1, got {trained!r}")
        return trained
    return min(int(getattr(tokenizer, "model_max_length", FOREIGN_MAX_LENGTH)), FOREIGN_MAX_LENGTH)


class HFClassifier:
    """Any Hugging Face sequence classifier, from a directory or a hub id.

    >>> model = HFClassifier.load("path/to/model")      # doctest: +SKIP
    >>> model.predict_proba(["where is my card?"]).shape  # doctest: +SKIP
    (1, 77)
    """

    label_only = False  # its rows are real probabilities

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        version: str,
        meta: ModelMeta | None = None,
        batch_size: int = 64,
        max_length: int = TrainConfig.max_length,  # a model built in memory was just trained with this truncation
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.meta = meta
        self.batch_size = batch_size
        self.max_length = max_length
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.device = next(model.parameters()).device
        self._encoder = _fast_encoder(tokenizer, max_length)

    @classmethod
    def load(
        cls, source: str | Path, device: str | None = None, batch_size: int = 64, max_length: int | None = None
    ) -> "HFClassifier":
        """Load a model directory (safetensors only) or a hub id; half precision on CUDA. Texts
        are truncated at ``max_length`` word pieces, by default as in training (``inference_max_length``)."""
        register_architectures()
        path = Path(source)
        is_dir = path.is_dir()
        if is_dir:
            refuse_pickle(path)
        elif path.exists() or str(source).startswith((".", "/")):
            raise ModelError(f"model not found: {source} is not a model directory")
        target = pick_device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(source), use_safetensors=True, dtype=dtype
            )
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load '{source}' as a sequence classifier: {err}") from err
        meta = read_meta(path) if is_dir else None
        version = meta.version if meta else (path.name if is_dir else str(source))
        max_length = max_length or inference_max_length(meta, tokenizer)
        return cls(model.to(target), tokenizer, version, meta, batch_size, max_length)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch, padded and truncated to ``max_length``, on the model's device."""
        if self._encoder is not None:
            encodings = self._encoder.encode_batch(list(texts))
            batch = {
                "input_ids": torch.tensor([e.ids for e in encodings]),
                "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
            }
        else:
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits in float32, in forward passes of texts of similar length (at most
        ``batch_size`` each; on a CPU at most ``CPU_PASS_TEXTS``, where padding costs more than
        a call: a 64-text Banking77 batch padded to its longest text took twice the time of four
        length-sorted passes of 16 for the MiniLM teacher)."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        per_pass = self.batch_size if self.device.type != "cpu" else min(self.batch_size, CPU_PASS_TEXTS)
        if len(texts) <= per_pass:  # one pass: nothing to reorder
            return self.model(**self.encode(texts)).logits.float().cpu().numpy()
        # passes of similar length pad less; results go back to the caller's order
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), per_pass):
            idx = order[start : start + per_pass]
            out[idx] = self.model(**self.encode([texts[i] for i in idx])).logits.float().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax of the logits, float32."""
        logits = self.logits(texts)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def save(self, directory: str | Path) -> None:
        """Write weights (safetensors), config with labels, and tokenizer files."""
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))

