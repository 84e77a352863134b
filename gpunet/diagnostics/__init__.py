"""Diagnostics: what a network's activations and updates look like, and how training reacts to its
hyper-parameters.

    activation_stats(model, x)          per-layer mean, std, min/max, zero and dead-unit shares, histogram
    init_experiment() / plot_...        the classic deep tanh/ReLU initialisation experiment (`gpunet diagnose init`)
    TrainingMonitor(model)              per-layer update/weight norm ratio and dead-ReLU share, as a callback
    gpunet.diagnostics.tune             random search over lr and weight decay (`gpunet tune`)
"""
from gpunet.diagnostics.activations import (LayerStats, activation_stats, is_activation, is_relu_output,
                                            record_outputs, tensor_stats)
from gpunet.diagnostics.init_experiment import INITS, NONLINEARITIES, deep_mlp, init_experiment, plot_init_experiment
from gpunet.diagnostics.monitor import TrainingMonitor

__all__ = ["LayerStats", "activation_stats", "is_activation", "is_relu_output", "record_outputs", "tensor_stats",
           "INITS", "NONLINEARITIES", "deep_mlp", "init_experiment", "plot_init_experiment", "TrainingMonitor"]
