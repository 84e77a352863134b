"""Optimizers (PyTorch's update rules), learning-rate schedules and gradient clipping."""
from gpunet.optim import lr_scheduler
from gpunet.optim.clip import clip_grad_norm_, clip_grad_value_
from gpunet.optim.optimizer import SGD, Adam, AdamW, HyperParameterError, Optimizer, RMSprop, decay_groups

__all__ = ["Optimizer", "HyperParameterError", "decay_groups", "SGD", "RMSprop", "Adam", "AdamW", "lr_scheduler", "clip_grad_norm_", "clip_grad_value_"]
