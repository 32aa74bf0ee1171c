"""The Layer protocol, masks, initialisers and seeding shared by every layer.

A layer owns its weights as arrays of its ops backend (NumPy for 'reference' and 'cpu',
device arrays for 'cuda'):

    y, backprop = layer.forward(x, mask=None, train=True)
    dx = backprop(dy)          # accumulates into layer.grads (aligned with get_weights())
    y = layer(x, mask=None)    # inference; NumPy in, NumPy out

`mask` is a boolean (B, T) array (True = real step) or a (B,) array of lengths; every
layer turns it into (starts, lengths) once, so pre- and post-padding follow one rule.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops import get_ops


def resolve_ops(ops):
    """Accept a backend name or module."""
    return get_ops(ops) if isinstance(ops, str) or ops is None else ops


# ----------------------------------------------------------------------------------------
# masks


def as_mask(mask, batch, timesteps):
    """A boolean (B, T) mask from a mask or from (B,) lengths (post-padding)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 1:
        if mask.shape[0] != batch:
            raise TaggerError(f"lengths has {mask.shape[0]} entries for a batch of {batch}")
        if (mask < 0).any() or (mask > timesteps).any():
            raise TaggerError(f"lengths must lie in 0..{timesteps} (the padded timesteps)")
        return np.arange(timesteps)[None, :] < mask[:, None]
    if mask.shape != (batch, timesteps):
        raise TaggerError(f"mask shape {mask.shape} does not match the input's (batch, timesteps) = {(batch, timesteps)}")
    return mask.astype(bool)


def mask_to_spans(mask, batch, timesteps):
    """(starts, lengths) int64 (B,) from a (B, T) mask whose real steps form one run per row."""
    if mask is None:
        return np.zeros(batch, dtype=np.int64), np.full(batch, timesteps, dtype=np.int64)
    mask = as_mask(mask, batch, timesteps)
    lengths = mask.sum(axis=1).astype(np.int64)
    starts = np.where(lengths > 0, mask.argmax(axis=1), 0).astype(np.int64)
    t = np.arange(timesteps)[None, :]
    contiguous = (t >= starts[:, None]) & (t < (starts + lengths)[:, None])
    if not np.array_equal(contiguous, mask):
        bad = int(np.nonzero((contiguous != mask).any(axis=1))[0][0])
        raise TaggerError(
            f"mask row {bad} has a gap: each row must be one run of real steps (pre- or post-padding)"
        )
    return starts, lengths


# ----------------------------------------------------------------------------------------
# seeding and Keras initialisers


def layer_rng(seed):
    return np.random.default_rng(seed)


def call_seed(layer_seed, call_index):
    """A per-call dropout seed derived from the layer seed, so runs repeat exactly."""
    base = 0 if layer_seed is None else int(layer_seed)
    return (base * 1_000_003 + call_index * 7919 + 17) % (2**63)


def glorot_uniform(rng, shape):
    fan_in, fan_out = shape[0], shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(rng, shape, gain=1.0):
    """Keras' Orthogonal: QR of a normal matrix, signs fixed by diag(R)."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def uniform(rng, shape, limit=0.05):
    return rng.uniform(-limit, limit, size=shape)


# ----------------------------------------------------------------------------------------
# base class


class Layer:
    """Keras-like layer over an ops backend.

    Subclasses define `build(input_shape)` (creating `self.params` via add_weight),
    `compute_output_shape`, `forward`, and optionally `compute_mask`.
    """

    _counts: dict[str, int] = {}

    def __init__(self, name=None, trainable=True, seed=None, ops="cpu", dtype=np.float32):
        kind = type(self).__name__.lower()
        if name is None:
            k = Layer._counts.get(kind, 0)
            Layer._counts[kind] = k + 1
            name = kind if k == 0 else f"{kind}_{k}"
        self.name = name
        self.trainable = trainable
        self.seed = seed
        self.ops = ops
        self.dtype = np.dtype(dtype)
        self.params: list = []
        self.grads: list = []
        self.param_names: list[str] = []
        # rows of each parameter touched since the last zero_grad (None = dense)
        self.grad_rows: list = []
        self.built = False
        self.input_shape = None
        self._calls = 0
        # bumped whenever the weights change (set_weights, an optimiser step), so caches
        # derived from them (the projected embedding tables) know when to refresh
        self.version = 0

    @property
    def ops(self):
        # resolved on first use, so a Sequential(ops=...) can still choose the backend
        if isinstance(self._ops, str) or self._ops is None:
            self._ops = resolve_ops(self._ops)
        return self._ops

    @ops.setter
    def ops(self, value):
        self._ops = value

    # -- weights ----------------------------------------------------------------------
    def add_weight(self, name, value):
        ops = self.ops
        self.params.append(ops.asarray(np.asarray(value), dtype=self.dtype))
        self.grads.append(ops.zeros(np.shape(value), dtype=self.dtype))
        self.param_names.append(name)
        self.grad_rows.append(None)

    def get_weights(self):
        return [np.array(self.ops.to_numpy(p)) for p in self.params]

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self.params):
            raise TaggerError(f"layer {self.name!r} expects {len(self.params)} weight arrays, got {len(weights)}")
        for k, (old, new) in enumerate(zip(self.params, weights)):
            new = np.asarray(new)
            if tuple(old.shape) != new.shape:
                raise TaggerError(
                    f"layer {self.name!r} weight {self.param_names[k]!r}: expected shape {tuple(old.shape)}, got {new.shape}"
                )
            self.params[k] = self.ops.asarray(new, dtype=self.dtype)
        self.version += 1

    def count_params(self):
        return int(sum(int(np.prod(p.shape)) for p in self.params))

    def zero_grad(self):
        for k, g in enumerate(self.grads):
            self.ops.fill_(g, 0.0, self.grad_rows[k])
            if self.grad_rows[k] is not None:
                self.grad_rows[k] = None

    def sublayers(self):
        return []

    # -- shapes -------------------------------------------------------------------------
    def ensure_built(self, input_shape):
        if not self.built:
            self.input_shape = tuple(input_shape)
            self.rng = layer_rng(self.seed)
            self.build(tuple(input_shape))
            self.built = True

    def build(self, input_shape):
        pass

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, x, mask):
        return mask

    def next_seed(self):
        self._calls += 1
        return call_seed(self.seed, self._calls)

    # -- running ------------------------------------------------------------------------
    def forward(self, x, mask=None, train=True):
        raise NotImplementedError

    def __call__(self, x, mask=None):
        y, _ = self.forward(self.ops.asarray(x), mask=mask, train=False)
        if isinstance(y, (list, tuple)):
            return [np.asarray(self.ops.to_numpy(v)) for v in y]
        return np.asarray(self.ops.to_numpy(y))

    def check_input(self, x, ndim, what):
        if len(x.shape) not in ndim:
            raise TaggerError(
                f"layer {self.name!r} expects {what}, got an array of shape {tuple(x.shape)}"
            )
