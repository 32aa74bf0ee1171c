"""Sequential: a stack of layers with mask propagation and a Keras-style summary()."""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError

from .base import Layer, deserialize, serialize
from .core import Dropout, Embedding
from .recurrent import Bidirectional, LSTM


class Sequential(Layer):
    """Layers applied in order. The spans flow like Keras' mask: given none, an Embedding
    with mask_zero=True derives them from the ids; recurrent layers with return_sequences
    pass them on, a layer returning one vector per sequence drops them. A training batch
    hands in its own spans (PaddedBatch.spans), so nothing is recomputed per layer.

    `ops` / `dtype` / `seed` given here are handed to layers that were not built yet;
    each layer gets its own seed drawn from `seed`, so one seed fixes every weight.
    """

    def __init__(self, layers=(), input_shape=None, name="sequential", seed=None, ops=None, dtype=None):
        super().__init__(name=name, seed=seed, ops=ops or "cpu", dtype=dtype or np.float32)
        self.layers: list[Layer] = []
        self._override_ops = ops is not None
        self._override_dtype = dtype is not None
        self._seeds = np.random.SeedSequence(seed) if seed is not None else None
        for layer in layers:
            self.add(layer)
        if input_shape is not None:
            self.build((None, *input_shape))

    def add(self, layer):
        if getattr(layer, "return_state", False):
            raise TaggerError(f"layer {layer.name!r}: return_state outputs a list; use it outside Sequential")
        for leaf in [layer, *layer.sublayers()]:
            if self._override_ops:
                leaf.ops = self._ops
            if self._override_dtype:
                leaf.dtype = self.dtype
        if self._seeds is not None and layer.seed is None:
            layer.seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
        self.layers.append(layer)

    def sublayers(self):
        return list(self.layers)

    def get_config(self):
        return {"name": self.name, "layers": [serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        return cls([deserialize(c) for c in config["layers"]], name=config.get("name", "sequential"))

    def leaves(self):
        """Layers that own weights directly (Bidirectional -> its two LSTMs)."""
        out = []
        for layer in self.layers:
            subs = layer.sublayers()
            out.extend(subs if subs else [layer])
        return out

    # -- shapes and building ---------------------------------------------------------
    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        shape = tuple(input_shape)
        for layer in self.layers:
            layer.ensure_built(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def output_shapes(self, input_shape=None):
        shape = tuple(input_shape or self.input_shape)
        shapes = []
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            shapes.append(shape)
        return shapes

    def compute_output_shape(self, input_shape):
        return self.output_shapes(input_shape)[-1]

    # -- weights ------------------------------------------------------------------------
    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]

    @params.setter
    def params(self, value):  # Layer.__init__ assigns []; weights live in the layers
        pass

    @property
    def grads(self):
        return [g for layer in self.layers for g in layer.grads]

    @grads.setter
    def grads(self, value):
        pass

    def get_weights(self):
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self.params):
            raise TaggerError(f"model expects {len(self.params)} weight arrays, got {len(weights)}")
        k = 0
        for layer in self.layers:
            n = len(layer.params)
            layer.set_weights(weights[k : k + n])
            k += n

    def named_weights(self):
        """(name, NumPy array) for every weight: 'layer/param'."""
        out = []
        for leaf in self.leaves():
            for pname, w in zip(leaf.param_names, leaf.get_weights()):
                out.append((f"{leaf.name}/{pname}", w))
        return out

    def zero_grad(self):
        for leaf in self.leaves():
            leaf.zero_grad()

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def trainable_count(self):
        return sum(leaf.count_params() for leaf in self.leaves() if leaf.trainable)

    # -- running ------------------------------------------------------------------------
    def call(self, x, spans, train):
        if not self.built:
            self.build(tuple(x.shape))
        layers = self.layers
        if spans is None and layers and hasattr(layers[0], "spans_from_ids"):  # Embedding, WordFeatures
            spans = layers[0].spans_from_ids(x)
        backprops = []
        if not train and self.projected_inference:
            fast = self._projected_prefix()
            if fast is not None and layers[fast[1]].projection_pays(fast[0], x.shape):
                embedding, k = fast
                x = layers[k].infer_from_ids(embedding, np.asarray(self.ops.to_numpy(x)), spans)
                spans = layers[k].output_spans(spans)
                layers = layers[k + 1 :]
        for layer in layers:
            x, backprop = layer.call(x, spans, train)
            spans = layer.output_spans(spans)
            backprops.append(backprop)

        def backprop(dy):
            for bp in reversed(backprops):
                dy = bp(dy)
            return dy

        return x, backprop

    # inference from ids through projected tables (see Bidirectional.infer_from_ids)
    projected_inference = True

    def _projected_prefix(self):
        """(embedding, index of the Bidirectional) when the stack starts Embedding ->
        [Dropout...] -> Bidirectional(LSTM) and the backend says the tables pay on it."""
        if not self.layers or not isinstance(self.layers[0], Embedding) or not self.layers[0].mask_zero:
            return None
        if not self.ops.PROJECTED_INFERENCE:
            return None
        k = 1
        while k < len(self.layers) and isinstance(self.layers[k], Dropout):
            k += 1  # identity at inference
        if k < len(self.layers) and isinstance(self.layers[k], Bidirectional) and not self.layers[k].return_state:
            return self.layers[0], k
        return None

    # -- summary ------------------------------------------------------------------------
    def summary(self, print_fn=print, line_length=78):
        """A Keras-style table: Layer (type), Output Shape, Param #, then the totals."""
        if not self.built:
            raise TaggerError("summary() needs the input shape: pass input_shape= or call build((None, ...)) first")
        widths = (32, 28, line_length - 60)
        rows = []
        for layer, shape in zip(self.layers, self.output_shapes()):
            rows.append((f"{layer.name} ({type(layer).__name__})", _fmt_shape(shape), f"{layer.count_params():,}"))
        total = self.count_params()
        trainable = self.trainable_count()
        lines = [f'Model: "{self.name}"', "_" * line_length]
        lines.append(_row(("Layer (type)", "Output Shape", "Param #"), widths))
        lines.append("=" * line_length)
        for k, r in enumerate(rows):
            lines.append(_row(r, widths))
            lines.append(("=" if k == len(rows) - 1 else "_") * line_length)
        lines += [
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
            "_" * line_length,
        ]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text


def _fmt_shape(shape):
    if isinstance(shape, list):
        return ", ".join(_fmt_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _row(cells, widths):
    return " " + "".join(str(c).ljust(w) for c, w in zip(cells, widths))


__all__ = ["Sequential", "LSTM", "Bidirectional", "serialize", "deserialize"]
