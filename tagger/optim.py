"""Optimisers, gradient clipping and learning-rate schedules.

An optimiser walks the weight-owning layers of a model (`model.leaves()` for a
Sequential, or a list of layers) and updates each trainable parameter in place through
the layer's ops backend. Embedding gradients are sparse: a layer records in
`grad_rows[k]` which rows a batch touched, and the lazy update touches only those rows
(on a 20k x 100 table a dense Adam step costs more than the whole LSTM).
"""
from __future__ import annotations

import math

import numpy as np

from tagger.errors import TaggerError


def _leaves(model):
    if hasattr(model, "leaves"):
        return model.leaves()
    out = []
    for layer in model:
        subs = layer.sublayers()
        out.extend(subs if subs else [layer])
    return out


def slots(model):
    """(layer, k) for every trainable parameter, in a fixed order."""
    return [(layer, k) for layer in _leaves(model) if layer.trainable for k in range(len(layer.params))]


def global_norm(model):
    total = 0.0
    for layer, k in slots(model):
        total += layer.ops.sum_of_squares(layer.grads[k], layer.grad_rows[k])
    return math.sqrt(total)


def clip_by_global_norm(model, max_norm):
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before."""
    norm = global_norm(model)
    if max_norm and norm > max_norm:
        factor = max_norm / (norm + 1e-12)
        for layer, k in slots(model):
            layer.ops.scale_(layer.grads[k], factor, layer.grad_rows[k])
    return norm


class Optimizer:
    def __init__(self, lr, weight_decay=0.0):
        if lr <= 0:
            raise TaggerError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.state: dict = {}

    def _state(self, layer, k, n):
        key = (id(layer), k)
        if key not in self.state:
            p = layer.params[k]
            self.state[key] = [layer.ops.zeros(tuple(p.shape), dtype=p.dtype) for _ in range(n)]
        return self.state[key]

    def step(self, model):
        """Apply one update from the accumulated gradients, then zero them."""
        self.step_count += 1
        for layer, k in slots(model):
            self.update(layer, k)
        for layer in _leaves(model):
            if layer.trainable:
                layer.version += 1
            layer.zero_grad()

    def update(self, layer, k):
        raise NotImplementedError


class Adam(Optimizer):
    """Adam with decoupled weight decay (AdamW). Keras' defaults: lr 1e-3, eps 1e-7.

    lazy=True: sparse gradients (embedding rows) update only the touched rows, moments
    included (TensorFlow's LazyAdam); untouched rows keep their weights and moments.
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0, lazy=True):
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2, self.eps, self.lazy = beta1, beta2, eps, lazy

    def update(self, layer, k):
        m, v = self._state(layer, k, 2)
        rows = layer.grad_rows[k] if self.lazy else None
        if rows is not None and len(rows) == 0:
            return
        layer.ops.adam_update(
            layer.params[k], layer.grads[k], m, v, self.lr, self.beta1, self.beta2, self.eps,
            self.weight_decay, self.step_count, rows,
        )


class SGD(Optimizer):
    """SGD with momentum (heavy ball) and decoupled weight decay; lazy rows as in Adam."""

    def __init__(self, lr=0.1, momentum=0.9, weight_decay=0.0, lazy=True):
        super().__init__(lr, weight_decay)
        self.momentum, self.lazy = momentum, lazy

    def update(self, layer, k):
        (velocity,) = self._state(layer, k, 1)
        rows = layer.grad_rows[k] if self.lazy else None
        if rows is not None and len(rows) == 0:
            return
        layer.ops.sgd_update(
            layer.params[k], layer.grads[k], velocity, self.lr, self.momentum, self.weight_decay, rows
        )


def make_optimizer(name, lr, weight_decay=0.0, momentum=0.9):
    if name == "adam":
        return Adam(lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise TaggerError(f"unknown optimizer {name!r}; choose adam or sgd")


class ReduceOnPlateau:
    """Multiply the lr by `factor` when the watched score has not improved for `patience` evaluations."""

    def __init__(self, optimizer, factor=0.5, patience=1, min_lr=1e-6):
        self.optimizer, self.factor, self.patience, self.min_lr = optimizer, factor, patience, min_lr
        self.best = -np.inf
        self.bad = 0

    def observe(self, score):
        """Returns True when the lr was reduced."""
        if score > self.best:
            self.best, self.bad = score, 0
            return False
        self.bad += 1
        if self.bad > self.patience and self.optimizer.lr > self.min_lr:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.bad = 0
            return True
        return False
