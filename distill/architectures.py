"""The project's own model architectures, as Hugging Face classes.

Both are registered with ``AutoConfig`` and ``AutoModelForSequenceClassification``, so a
directory saved by ``save_pretrained`` loads back through the same ``from_pretrained`` call
as any hub classifier (once ``distill`` is imported). Weights are safetensors only.

- ``MeanPoolClassifier``: a BERT encoder, mean pooling over tokens, optional L2
  normalisation, a linear head. With the embedded encoder frozen it is the default teacher;
  with ``num_hidden_layers`` = k and layers copied from the teacher it is the transformer student.
- ``BagOfWordsClassifier``: an ``EmbeddingBag`` over word pieces (mean mode) and a 2-layer MLP:
  the fast default student, about fifty times cheaper than the teacher on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput


def _classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> SequenceClassifierOutput:
    """What HF sequence classifiers return: logits, and the cross-entropy when labels are given."""
    loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


class MeanPoolConfig(BertConfig):
    """A BERT config plus the pooling choice of the sentence-embedding head."""

    model_type = "cascade_meanpool"

    def __init__(self, normalize: bool = True, logit_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.normalize = normalize  # L2-normalise the pooled embedding, as sentence-transformers does
        self.logit_scale = logit_scale  # fixed scale on the head's input (normalised vectors are short)


class MeanPoolClassifier(PreTrainedModel):
    """Sentence embedding (mean-pooled BERT, L2-normalised) followed by a linear head."""

    config_class = MeanPoolConfig
    base_model_prefix = "encoder"

    def __init__(self, config: MeanPoolConfig):
        super().__init__(config)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled (and optionally normalised) token embeddings, one row per text."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: object,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return _classifier_output(self.head(self.embed(input_ids, attention_mask) * self.config.logit_scale), labels)


class BagOfWordsConfig(PretrainedConfig):
    """Sizes of the bag-of-word-pieces student."""

    model_type = "cascade_bow"

    def __init__(
        self,
        vocab_size: int = 30522,
        embedding_dim: int = 384,
        hidden_size: int = 512,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size  # the tokenizer's vocabulary
        self.embedding_dim = embedding_dim  # equals the teacher's hidden size when initialised from it
        self.hidden_size = hidden_size  # width of the MLP's hidden layer
        self.dropout = dropout  # applied to the bag embedding and the hidden layer in training


class BagOfWordsClassifier(PreTrainedModel):
    """Mean of word-piece embeddings, then Linear-GELU-Linear. Padding is left out of the mean."""

    config_class = BagOfWordsConfig
    base_model_prefix = "bow"

    def __init__(self, config: BagOfWordsConfig):
        super().__init__(config)
        self.embeddings = nn.EmbeddingBag(
            config.vocab_size, config.embedding_dim, mode="mean", padding_idx=config.pad_token_id, sparse=True
        )
        self.mlp = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.embedding_dim, config.hidden_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.num_labels),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.EmbeddingBag):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: object,
    ) -> SequenceClassifierOutput:
        return _classifier_output(self.mlp(self.embeddings(input_ids)), labels)


def register_architectures() -> None:
    """Make ``AutoModelForSequenceClassification`` know the project's model types (idempotent)."""
    for config_cls, model_cls in ((MeanPoolConfig, MeanPoolClassifier), (BagOfWordsConfig, BagOfWordsClassifier)):
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
            AutoModelForSequenceClassification.register(config_cls, model_cls)
        except ValueError:  # already registered in this process
            pass
