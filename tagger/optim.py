"""Optimisers, gradient clipping and learning-rate schedules.

An optimiser walks the weight-owning layers of a model (`model.leaves()` for a
Sequential, or a list of layers) and updates each trainable parameter in place through
the layer's ops backend. Embedding gradients are sparse: a layer records in
`grad_rows[k]` which rows a batch touched, and the lazy update touches only those rows
(on a 20k x 100 table a dense Adam step costs more than the whole LSTM).

Moving average (Keras' `use_ema`): with `ema_momentum` set, every update is followed by
average = ema_momentum * average + (1 - ema_momentum) * weights for every parameter,
embedding rows included (a row a batch did not touch still moves its average towards its
weights); the average starts as the weights before the first update. Training runs on the
weights; `averaged(model)` puts the averages in for evaluation and saving.

State: `Optimizer.get_state()` is a dict of plain NumPy arrays named
`layer/param/slot` (Adam: m, v; SGD: velocity; with a moving average also ema) plus
`step` and `lr`; `set_state()` takes the same dict (moments are placed on a parameter's
backend when it is first updated), so a checkpoint can hold the optimizer beside the
weights.

Patience: one rule for "improved" and "exhausted", used by early stopping (training)
and ReduceOnPlateau: a score improves when it is strictly greater than the best so
far; patience `n` is exhausted after `n` evaluations in a row without improvement.
"""
from __future__ import annotations

import contextlib
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


def _update_all(work, update, dense=False):
    """update(layer, k) for every slot of `work`. On a backend that runs work in two threads
    (the CPU backend's concurrent_submit, at a thread plan of 2) the slots go in two halves
    of about equal cost at once: each update touches only its own slot's arrays and its
    kernel releases the GIL, so the result is the same bits as one after the other. (The
    update of every weight is part of a step that 2 threads did not share: ~6 % of a
    layers-benchmark step at 2 threads.)"""
    backends = {id(layer.ops): layer.ops for layer, _ in work}
    submit = None
    if len(backends) == 1:
        (ops,) = backends.values()
        submit = ops.concurrent_submit() if hasattr(ops, "concurrent_submit") else None
    if submit is None or len(work) < 2:
        for layer, k in work:
            update(layer, k)
        return
    halves, cost = ([], []), [0, 0]
    costed = sorted(((_update_cost(layer, k, dense), i) for i, (layer, k) in enumerate(work)), key=lambda item: -item[0])
    for units, i in costed:  # largest first, each to the lighter half
        side = 0 if cost[0] <= cost[1] else 1
        halves[side].append(work[i])
        cost[side] += units
    second = submit(lambda: [update(layer, k) for layer, k in halves[1]])
    try:
        for layer, k in halves[0]:
            update(layer, k)
    finally:
        second.result()  # never return (or raise) while the other half still writes


def _update_cost(layer, k, dense=False) -> int:
    """Values a lazy update of slot k touches: its touched rows, or all of it (always all
    of it when `dense`: the moving average's pass)."""
    p, rows = layer.params[k], layer.grad_rows[k]
    if rows is None or dense:
        return int(np.prod(p.shape))
    return len(rows) * int(np.prod(p.shape[1:]))


class Optimizer:
    """One update per `step(model)` over every trainable parameter; state per parameter
    in SLOTS arrays on the parameter's backend, created at its first update."""

    SLOTS: tuple[str, ...] = ()  # names of the per-parameter state arrays

    def __init__(self, lr, weight_decay=0.0, ema_momentum=None):
        if lr <= 0:
            raise TaggerError(f"learning rate must be positive, got {lr}")
        if ema_momentum is not None and not 0 <= ema_momentum < 1:
            raise TaggerError(f"ema_momentum must lie in [0, 1), got {ema_momentum}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.ema_momentum = None if ema_momentum is None else float(ema_momentum)
        # this optimizer's slots: its own, and the moving average last
        self.slot_names = type(self).SLOTS + (("ema",) if self.ema_momentum is not None else ())
        self.step_count = 0
        self.state: dict = {}  # (id(layer), k) -> [slot arrays on the layer's backend]
        self.names: dict = {}  # (id(layer), k) -> ("layer/param", the layer's ops)
        self.pending: dict[str, np.ndarray] = {}  # from set_state, placed at first use

    def _state(self, layer, k):
        key = (id(layer), k)
        if key not in self.state:
            p = layer.params[k]
            name = f"{layer.name}/{layer.param_names[k]}"
            arrays = []
            for slot in self.slot_names:
                saved = self.pending.pop(f"{name}/{slot}", None)
                if saved is None and slot == "ema":  # the average starts as the weights
                    arrays.append(layer.ops.asarray(np.array(layer.ops.to_numpy(p)), dtype=p.dtype))
                    continue
                if saved is None:
                    arrays.append(layer.ops.zeros(tuple(p.shape), dtype=p.dtype))
                    continue
                if tuple(saved.shape) != tuple(p.shape):
                    raise TaggerError(f"optimizer state {name}/{slot}: shape {tuple(saved.shape)}, the parameter is {tuple(p.shape)}")
                arrays.append(layer.ops.asarray(saved, dtype=p.dtype))
            self.state[key], self.names[key] = arrays, (name, layer.ops)
        return self.state[key]

    def get_state(self) -> dict[str, np.ndarray]:
        """Every state array as a NumPy copy, named `layer/param/slot`, plus `step` and `lr`."""
        out = {"step": np.array(self.step_count, dtype=np.int64), "lr": np.array(self.lr, dtype=np.float64)}
        for key, arrays in self.state.items():
            name, ops = self.names[key]
            for slot, arr in zip(self.slot_names, arrays):
                out[f"{name}/{slot}"] = np.array(ops.to_numpy(arr))
        out.update({name: np.array(arr) for name, arr in self.pending.items()})
        return out

    def set_state(self, state: dict) -> None:
        """Restore what get_state returned (before the first step, or between steps)."""
        if "step" not in state or "lr" not in state:
            raise TaggerError("optimizer state: needs 'step' and 'lr' (as written by get_state)")
        for name in state:
            if name not in ("step", "lr") and name.rpartition("/")[2] not in self.slot_names:
                raise TaggerError(f"optimizer state {name}: not a {type(self).__name__} slot ({', '.join(self.slot_names)})")
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])
        self.state, self.names = {}, {}
        self.pending = {name: np.asarray(arr) for name, arr in state.items() if name not in ("step", "lr")}

    def step(self, model):
        """Apply one update from the accumulated gradients, then zero them."""
        self.step_count += 1
        work = slots(model)
        for layer, k in work:
            self._state(layer, k)  # every state exists before the updates may run in two threads
        _update_all(work, self.update if self.ema_momentum is None else self._update_and_average,
                    dense=self.ema_momentum is not None)
        for layer in _leaves(model):
            if layer.trainable:
                layer.version += 1
            layer.zero_grad()

    def update(self, layer, k):
        raise NotImplementedError

    def _update_and_average(self, layer, k):
        self.update(layer, k)
        layer.ops.ema_update(self._state(layer, k)[-1], layer.params[k], self.ema_momentum)

    @contextlib.contextmanager
    def averaged(self, model):
        """Inside the block, every updated parameter of `model` holds its moving average;
        after it, the weights again, bit for bit. Without a moving average: nothing."""
        swapped = []
        try:
            if self.ema_momentum is not None:
                for layer in _leaves(model):
                    keys = [(id(layer), k) for k in range(len(layer.params))]
                    if not layer.trainable or not keys or any(key not in self.state for key in keys):
                        continue  # never updated: its weights are its average
                    weights = layer.get_weights()
                    layer.set_weights([layer.ops.to_numpy(self.state[key][-1]) for key in keys])
                    swapped.append((layer, weights))
            yield
        finally:
            for layer, weights in swapped:
                layer.set_weights(weights)


class Adam(Optimizer):
    SLOTS = ("m", "v")

    """Adam with decoupled weight decay (AdamW). Keras' defaults: lr 1e-3, eps 1e-7.

    lazy=True: sparse gradients (embedding rows) update only the touched rows, moments
    included (TensorFlow's LazyAdam); untouched rows keep their weights and moments.
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0, lazy=True, ema_momentum=None):
        super().__init__(lr, weight_decay, ema_momentum)
        self.beta1, self.beta2, self.eps, self.lazy = beta1, beta2, eps, lazy

    def update(self, layer, k):
        m, v = self._state(layer, k)[:2]  # then the moving average, if any
        rows = layer.grad_rows[k] if self.lazy else None
        if rows is not None and len(rows) == 0:
            return
        layer.ops.adam_update(
            layer.params[k], layer.grads[k], m, v, self.lr, self.beta1, self.beta2, self.eps,
            self.weight_decay, self.step_count, rows,
        )


class SGD(Optimizer):
    SLOTS = ("velocity",)

    """SGD with momentum (heavy ball) and decoupled weight decay; lazy rows as in Adam."""

    def __init__(self, lr=0.1, momentum=0.9, weight_decay=0.0, lazy=True, ema_momentum=None):
        super().__init__(lr, weight_decay, ema_momentum)
        self.momentum, self.lazy = momentum, lazy

    def update(self, layer, k):
        velocity = self._state(layer, k)[0]
        rows = layer.grad_rows[k] if self.lazy else None
        if rows is not None and len(rows) == 0:
            return
        layer.ops.sgd_update(
            layer.params[k], layer.grads[k], velocity, self.lr, self.momentum, self.weight_decay, rows
        )


def make_optimizer(name, lr, weight_decay=0.0, momentum=0.9, ema_momentum=None):
    """ema_momentum: keep a moving average of the weights (None: none)."""
    if name == "adam":
        return Adam(lr=lr, weight_decay=weight_decay, ema_momentum=ema_momentum)
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum, weight_decay=weight_decay, ema_momentum=ema_momentum)
    raise TaggerError(f"unknown optimizer {name!r}; choose adam or sgd")


class Patience:
    """Counts evaluations without improvement.

    improved:  score > best so far (strictly; the first score always improves)
    exhausted: `limit` evaluations in a row without improvement (`bad >= limit`);
               never with limit None
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.best = -math.inf
        self.bad = 0

    def observe(self, score: float) -> bool:
        """Record one evaluation's score; True when it improved on the best."""
        if score > self.best:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.bad >= self.limit


class ReduceOnPlateau:
    """Multiply the lr by `factor` when the watched score stops improving.

    `patience` keeps its historical (PyTorch ReduceLROnPlateau) meaning: the number of
    evaluations without improvement that are *tolerated*; the lr drops at the next one,
    i.e. after patience + 1 in a row (training.lr_patience 1: after two). That is a
    Patience(patience + 1); after a reduction the count starts again. At min_lr the lr
    stays and the count keeps growing.
    """

    def __init__(self, optimizer, factor=0.5, patience=1, min_lr=1e-6):
        self.optimizer, self.factor, self.min_lr = optimizer, factor, min_lr
        self.patience = Patience(patience + 1)

    def observe(self, score) -> bool:
        """Returns True when the lr was reduced."""
        if self.patience.observe(score) or not self.patience.exhausted or self.optimizer.lr <= self.min_lr:
            return False
        self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
        self.patience.bad = 0
        return True
