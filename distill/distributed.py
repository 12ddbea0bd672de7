"""Refresh training as a Ray Train job, for when data or models outgrow one process.

The same ``train_student`` loop runs in every worker: Ray Data splits the rows into equal
shards (equal, so every worker takes the same number of steps), ``prepare_model`` wraps the
model in DistributedDataParallel (gloo on CPU, NCCL on GPU), and rank 0 returns the trained
weights as a safetensors checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from distill.config import TrainConfig
from distill.train import train_student


def _worker_loop(setup: dict) -> None:
    import ray.train
    import ray.train.torch

    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    model = setup["model"]
    for module in model.modules():  # DDP all-reduces dense gradients only
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            module.sparse = False
    model = ray.train.torch.prepare_model(model)
    metrics = train_student(
        model,
        setup["tokenizer"],
        [r["text"] for r in rows],
        np.array([r["label"] for r in rows], dtype=np.int64),
        np.stack([np.asarray(r["log_probs"], dtype=np.float32) for r in rows]),
        setup["config"],
        np.array([r["weight"] for r in rows], dtype=np.float32),
        progress=False,
    )
    metrics = {"rows": metrics["rows"], "final_loss": metrics["epoch_loss"][-1], "train_seconds": metrics["train_seconds"]}
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as directory:
            inner = model.module if hasattr(model, "module") else model
            save_file({k: v.contiguous().cpu() for k, v in inner.state_dict().items()}, str(Path(directory) / "model.safetensors"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    else:
        ray.train.report(metrics)


def train_on_ray(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    labels: np.ndarray,
    teacher_log_probs: np.ndarray,
    weights: np.ndarray,
    config: TrainConfig,
    num_workers: int,
    storage: Path,
    use_gpu: bool = False,
    cpus_per_worker: float = 0.5,
) -> dict:
    """Train ``model`` with a ``TorchTrainer`` of ``num_workers`` workers; loads the trained
    weights back into ``model`` and returns rank 0's metrics."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = [
        {"text": text, "label": int(label), "log_probs": log_probs.tolist(), "weight": float(weight)}
        for text, label, log_probs, weight in zip(texts, labels, teacher_log_probs, weights)
    ]
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"model": model, "tokenizer": tokenizer, "config": config},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(storage_path=str(storage.resolve()), name="refresh"),
        datasets={"train": ray.data.from_items(rows)},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        state = load_file(str(Path(directory) / "model.safetensors"))
    model.load_state_dict(state)
    return {**result.metrics, "workers": num_workers}
