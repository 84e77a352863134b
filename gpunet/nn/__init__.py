"""Layers, containers and losses, written once against `backend.xp`/`backend.ops`; each forward records
graph nodes (gpunet.autograd) whose backwards call the same ops.

    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, activation="relu"), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).to("auto")
    crit = nn.SoftmaxCrossEntropy()
    loss = crit(model(gpunet.tensor(x)), y); loss.backward()
"""
from gpunet.nn.attention import AdditiveAttention, MultiheadAttention, scaled_dot_product_attention
from gpunet.nn.activations import ELU, PReLU, LeakyReLU, ReLU, Sigmoid, Tanh
from gpunet.nn.containers import Concat, Residual, Sequential
from gpunet.nn.embedding import Embedding
from gpunet.nn.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d,
                              Identity, Linear, MaxPool2d)
from gpunet.nn.lrn import LocalResponseNorm
from gpunet.nn.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from gpunet.nn.module import IncompatibleKeys, Module, Parameter
from gpunet.nn.recurrent import GRU, LSTM, RNN, LastStep, RowsAsSequence
from gpunet.nn.regularization import L2Penalized
from gpunet.nn.sequence import Seq2Seq, SequenceCrossEntropy, TimeDistributed, last_valid, lengths_to_mask

__all__ = [
    "Module", "Parameter", "IncompatibleKeys",
    "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "Flatten", "Identity", "Dropout", "LocalResponseNorm",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh",
    "Sequential", "Residual", "Concat",
    "MultiheadAttention", "AdditiveAttention", "scaled_dot_product_attention",
    "SoftmaxCrossEntropy", "BCEWithLogits", "MSELoss", "L2Penalized",
    "Embedding", "RNN", "GRU", "LSTM", "LastStep", "RowsAsSequence",
    "SequenceCrossEntropy", "TimeDistributed", "Seq2Seq", "last_valid", "lengths_to_mask",
]
