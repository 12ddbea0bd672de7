"""The student trainer: one loop for every student architecture and every distillation mode.

1. tokenise the training texts once;
2. each epoch, shuffle with a seeded generator and step through mini-batches;
3. per batch, the loss of the chosen mode (``losses``): soft labels, label-only, or hard labels;
4. AdamW with a linear decay of the learning rate; progress bar per epoch.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.config import TrainConfig
from distill.losses import IGNORE, hard_label_loss, label_only_loss, soft_label_loss

def train_student(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: np.ndarray | None,
    teacher_log_probs: np.ndarray | None,
    config: TrainConfig,
    weights: np.ndarray | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` in place; returns training metrics (loss per epoch, rows, seconds).

    ``labels`` uses ``losses.IGNORE`` for rows without ground truth; ``teacher_log_probs``
    (shape rows x labels) is required by the ``soft`` and ``label-only`` modes.
    """
    n = len(texts)
    if config.mode != "hard" and teacher_log_probs is None:
        raise ValueError(f"mode '{config.mode}' needs the teacher's outputs; use mode 'hard' without a teacher")
    if labels is None:
        labels = np.full(n, IGNORE, dtype=np.int64)
    if config.mode == "hard" and (labels == IGNORE).any():
        raise ValueError("mode 'hard' needs a ground-truth label on every row")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    y = torch.as_tensor(labels, dtype=torch.long)
    teacher = torch.as_tensor(teacher_log_probs, dtype=torch.float32) if teacher_log_probs is not None else None
    teacher_top = teacher.argmax(-1) if teacher is not None else None
    w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None

    optimizers = _optimizers(model, config)
    steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / max(1, steps))) for opt in optimizers
    ]
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    started, epoch_losses = time.perf_counter(), []
    bar = tqdm(range(config.epochs), desc=f"train ({config.mode})", unit="epoch", disable=not progress)
    for _ in bar:
        order, total = torch.randperm(n, generator=generator), 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            batch_mask = mask[idx]
            width = int(batch_mask.sum(1).max())  # trim columns that are padding in the whole batch
            logits = model(input_ids=ids[idx, :width].to(device), attention_mask=batch_mask[:, :width].to(device)).logits
            batch_w = w[idx].to(device) if w is not None else None
            if config.mode == "soft":
                loss = soft_label_loss(logits, teacher[idx].to(device), y[idx].to(device), config.temperature, config.alpha, batch_w)
            elif config.mode == "label-only":
                loss = label_only_loss(logits, teacher_top[idx].to(device), y[idx].to(device), config.alpha, batch_w)
            else:
                loss = hard_label_loss(logits, y[idx].to(device), batch_w)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt, scheduler in zip(optimizers, schedulers):
                opt.step()
                scheduler.step()
            total += loss.item() * len(idx)
        epoch_losses.append(round(total / n, 5))
        bar.set_postfix(loss=epoch_losses[-1])
    model.eval()
    return {"rows": n, "epoch_loss": epoch_losses, "train_seconds": round(time.perf_counter() - started, 2)}


def _optimizers(model: torch.nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for dense parameters; SparseAdam for embedding tables with sparse gradients, so a
    step touches only the rows of the word pieces in the batch (30k-row tables made each
    dense step about 80 ms on a CPU)."""
    sparse = [
        m.weight for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse
    ]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=config.lr))
    return optimizers
