"""The Layer protocol, padding spans, initialisers and seeding shared by every layer.

A layer owns its weights as arrays of its ops backend (NumPy for 'reference' and 'cpu',
device arrays for 'cuda'):

    y, backprop = layer.forward(x, spans=None, train=True)
    dx = backprop(dy)          # accumulates into layer.grads (aligned with get_weights())
    y = layer(x, mask=None)    # inference; NumPy in, NumPy out

Padding is described once, by a `tagger.spans.Spans` (starts, lengths): a batch computes it
(PaddedBatch.spans) and the same object goes down the whole chain. At the public API a
Keras-style `mask` (boolean (B, T), True = real step, or (B,) lengths) is accepted in its
place and converted once, by `as_spans`. Subclasses implement `call(x, spans, train)` with
`spans` already a Spans or None (None: no padding), and `output_spans(spans)`, the spans
their output carries (Keras' compute_mask).
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops import get_ops
from tagger.spans import Spans


def resolve_ops(ops):
    """Accept a backend name or module."""
    return get_ops(ops) if isinstance(ops, str) or ops is None else ops


def as_spans(mask, shape):
    """Spans from a Spans, a Keras mask ((B, T) bool or (B,) lengths), or None (stays None)."""
    if mask is None or isinstance(mask, Spans) and (mask.batch, mask.timesteps) == tuple(shape[:2]):
        return mask
    return Spans.from_mask(mask, int(shape[0]), int(shape[1]))


def spans_of(spans, shape):
    """(starts, lengths) for the ops: the given spans, or every step real when None."""
    if spans is None:
        spans = Spans.full(int(shape[0]), int(shape[1]))
    return spans.starts, spans.lengths


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


def _fans(shape):
    # Keras' compute_fans for the 1-D and 2-D weights layers have here
    return (shape[0], shape[0]) if len(shape) == 1 else (int(np.prod(shape[:-1])), shape[-1])


def _variance_scaling(scale, mode):
    def init(rng, shape):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        return uniform(rng, shape, np.sqrt(3.0 * scale / max(1.0, n)))

    return init


# Keras initializer names -> f(rng, shape). Weights are drawn in float64 from the layer's
# own generator, so one seed gives the same weights for every dtype and backend.
INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "orthogonal": orthogonal,
    "zeros": lambda rng, shape: np.zeros(shape),
    "ones": lambda rng, shape: np.ones(shape),
    "uniform": uniform,
    "random_uniform": uniform,
    "random_normal": lambda rng, shape: rng.normal(0.0, 0.05, size=shape),
    "he_uniform": _variance_scaling(2.0, "fan_in"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in"),
}


def get_initializer(init, what):
    """An initializer by Keras name, or a callable f(shape) -> array used as it is."""
    if callable(init):
        return lambda rng, shape: np.asarray(init(shape), dtype=np.float64).reshape(shape)
    if init not in INITIALIZERS:
        raise TaggerError(f"{what}: unknown initializer {init!r}; choose one of {', '.join(INITIALIZERS)} or pass a callable")
    return INITIALIZERS[init]


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

    # -- config (Keras' get_config / from_config) ---------------------------------------
    # constructor arguments a subclass stores under the same attribute names
    config_keys: tuple[str, ...] = ()

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this layer (weights not included)."""
        base = {"name": self.name, "trainable": self.trainable, "seed": self.seed, "dtype": self.dtype.name}
        return {**base, **{k: getattr(self, k) for k in self.config_keys}}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

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

    def output_spans(self, spans):
        """The spans of this layer's output (Keras' compute_mask): the input's by default."""
        return spans

    def next_seed(self):
        self._calls += 1
        return call_seed(self.seed, self._calls)

    # -- running ------------------------------------------------------------------------
    def forward(self, x, spans=None, train=True, mask=None, **kwargs):
        """(y, backprop). `spans` (a Spans) or a Keras `mask` describe the padding; kwargs
        are the layer's own call arguments (initial_state for the recurrent layers)."""
        return self.call(x, as_spans(spans if mask is None else mask, tuple(x.shape)), train, **kwargs)

    def call(self, x, spans, train):
        raise NotImplementedError

    def __call__(self, x, mask=None, **kwargs):
        if kwargs.get("initial_state") is not None:
            kwargs["initial_state"] = [self.ops.asarray(s, dtype=self.dtype) for s in kwargs["initial_state"]]
        x = x if getattr(x, "host_inputs", False) else self.ops.asarray(x)  # WordInputs: the layer moves its parts
        y, _ = self.forward(x, mask=mask, train=False, **kwargs)
        if isinstance(y, (list, tuple)):
            return [np.asarray(self.ops.to_numpy(v)) for v in y]
        return np.asarray(self.ops.to_numpy(y))

    def check_input(self, x, ndim, what):
        if len(x.shape) not in ndim:
            raise TaggerError(
                f"layer {self.name!r} expects {what}, got an array of shape {tuple(x.shape)}"
            )


# ----------------------------------------------------------------------------------------
# serialization (Keras' {"class_name", "config"})


def serialize(layer) -> dict:
    """{"class_name": ..., "config": layer.get_config()}, as Keras writes a layer."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def layer_classes() -> dict[str, type]:
    """Every Layer subclass defined in tagger.layers, by class name."""
    found, todo = {}, [Layer]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("tagger.layers") and not sub.__name__.startswith("_"):
                found[sub.__name__] = sub
    return found


def deserialize(spec: dict):
    """A new, unbuilt layer from serialize()'s output: the class is looked up among
    tagger's own layers (no weights, and no code named by the data is imported or run)."""
    name = spec.get("class_name") if isinstance(spec, dict) else None
    cls = layer_classes().get(name) if isinstance(name, str) else None
    if cls is None:
        raise TaggerError(f"unknown layer class {name!r}; expected one of {', '.join(sorted(layer_classes()))}")
    return cls.from_config(spec.get("config", {}))
