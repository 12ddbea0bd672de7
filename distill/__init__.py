"""Offline work: data, model backends, distillation, evaluation, the model registry and the refresh loop."""
