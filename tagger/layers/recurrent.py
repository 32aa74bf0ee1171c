"""LSTM and Bidirectional with Keras semantics over the ops backends.

Legend: B batch, T timesteps, I input features, H units, G = 4H.
Weights (Keras layout): kernel (I, G), recurrent_kernel (H, G), bias (G,); gate order
i, f, c, o; glorot-uniform kernel, orthogonal recurrent kernel, forget-gate bias 1.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops.reference import MERGE_MODES

from .base import Layer, glorot_uniform, mask_to_spans, orthogonal


class LSTM(Layer):
    """Long short-term memory over (B, T, I) input, padding- and mask-aware.

    return_sequences=True -> (B, T, H), else the final state (B, H).
    return_state=True -> [output, h, c] like Keras.
    go_backwards=True reads each sequence from its last real token to its first. Unlike
    Keras, which returns the reversed sequence, the outputs are aligned with the input
    time steps: y[:, t] is the state after reading x[:, t] (so a Bidirectional merge needs
    no flip, and padded steps stay where the padding is).
    dropout: on the inputs, recurrent_dropout: on h before the recurrent kernel; each is
    one mask per sequence, shared by all time steps (Keras' behaviour).
    The final state is the state at the last real token (forward) or after the first
    token (go_backwards), whatever the padding side.
    """

    def __init__(
        self,
        units,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        dropout=0.0,
        recurrent_dropout=0.0,
        unit_forget_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for what, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise TaggerError(f"LSTM {what} must be in [0, 1), got {rate}")
        self.units = int(units)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.unit_forget_bias = unit_forget_bias

    def build(self, input_shape):
        I, H = input_shape[-1], self.units
        if I is None:
            raise TaggerError(f"layer {self.name!r} needs the feature size of its input")
        self.add_weight("kernel", glorot_uniform(self.rng, (I, 4 * H)))
        self.add_weight("recurrent_kernel", orthogonal(self.rng, (H, 4 * H)))
        bias = np.zeros(4 * H)
        if self.unit_forget_bias:
            bias[H : 2 * H] = 1.0
        self.add_weight("bias", bias)

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out, (B, self.units), (B, self.units)]
        return out

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None

    def forward(self, x, mask=None, train=True):
        self.check_input(x, (3,), "input of shape (batch, timesteps, features)")
        self.ensure_built(tuple(x.shape))
        B, T, I = x.shape
        if I != self.params[0].shape[0]:
            raise TaggerError(f"layer {self.name!r} expects {self.params[0].shape[0]} features, got {I}")
        ops = self.ops
        starts, lengths = mask_to_spans(mask, B, T)
        in_mask = rec_mask = None
        if train and self.dropout > 0:
            in_mask = ops.dropout_mask((B, I), self.dropout, self.next_seed(), self.dtype)
        if train and self.recurrent_dropout > 0:
            rec_mask = ops.dropout_mask((B, self.units), self.recurrent_dropout, self.next_seed(), self.dtype)
        kernel, recurrent, bias = self.params
        Y, h, c, cache = ops.lstm_forward(
            x, kernel, recurrent, bias, starts, lengths, self.go_backwards, in_mask, rec_mask
        )
        out = Y if self.return_sequences else h

        def backprop(dy):
            if self.return_state:
                dout, dh, dc = dy
            else:
                dout, dh, dc = dy, None, None
            if self.return_sequences:
                dY = dout
            else:
                dY = None
                if dout is not None:
                    dh = dout if dh is None else _add(ops, dh, dout)
            return ops.lstm_backward(cache, dY, dh, dc, *self.grads)

        return ([out, h, c] if self.return_state else out), backprop


def _add(ops, a, b):
    return ops.merge_forward(a, b, "sum")


class Bidirectional(Layer):
    """Runs `layer` forward and a go_backwards copy of it, merging their outputs step by step.

    merge_mode: 'concat' (default, output width 2H), 'sum', 'ave' or 'mul' (width H).
    Weights: the forward layer's three arrays, then the backward layer's (Keras order).
    return_state=True -> [output, h_fw, c_fw, h_bw, c_bw] like Keras.
    """

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        if not isinstance(layer, LSTM):
            raise TaggerError("Bidirectional wraps an LSTM layer")
        if merge_mode not in MERGE_MODES:
            raise TaggerError(f"unknown merge_mode {merge_mode!r}; choose one of {', '.join(MERGE_MODES)}")
        kwargs.setdefault("ops", layer._ops)
        kwargs.setdefault("dtype", layer.dtype)
        kwargs.setdefault("seed", layer.seed)
        super().__init__(**kwargs)
        self.merge_mode = merge_mode
        self.forward_layer = layer
        if backward_layer is None:
            backward_layer = LSTM(
                layer.units,
                return_sequences=layer.return_sequences,
                return_state=layer.return_state,
                go_backwards=not layer.go_backwards,
                dropout=layer.dropout,
                recurrent_dropout=layer.recurrent_dropout,
                unit_forget_bias=layer.unit_forget_bias,
                name=layer.name,
                trainable=layer.trainable,
                ops=layer._ops,
                dtype=layer.dtype,
            )
        backward_layer.ops = layer.ops = self._ops
        self.backward_layer = backward_layer
        layer.name = f"forward_{layer.name}"
        backward_layer.name = f"backward_{backward_layer.name}"
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state

    def sublayers(self):
        return [self.forward_layer, self.backward_layer]

    def build(self, input_shape):
        # distinct seeds, so the two directions do not start from the same weights
        base = 0 if self.seed is None else int(self.seed)
        self.forward_layer.seed = base * 2 + 1 if self.seed is not None else None
        self.backward_layer.seed = base * 2 + 2 if self.seed is not None else None
        self.forward_layer.ensure_built(input_shape)
        self.backward_layer.ensure_built(input_shape)

    # weights live in the two LSTMs; these views are derived so they never go stale
    @property
    def params(self):
        return self.forward_layer.params + self.backward_layer.params if self.built else []

    @params.setter
    def params(self, value):
        pass

    @property
    def grads(self):
        return self.forward_layer.grads + self.backward_layer.grads if self.built else []

    @grads.setter
    def grads(self, value):
        pass

    @property
    def param_names(self):
        return [f"forward_{n}" for n in self.forward_layer.param_names] + [
            f"backward_{n}" for n in self.backward_layer.param_names
        ]

    @param_names.setter
    def param_names(self, value):
        pass

    @property
    def grad_rows(self):
        return self.forward_layer.grad_rows + self.backward_layer.grad_rows

    @grad_rows.setter
    def grad_rows(self, value):
        pass

    def zero_grad(self):
        self.forward_layer.zero_grad()
        self.backward_layer.zero_grad()

    def set_weights(self, weights):
        weights = list(weights)
        n = len(self.forward_layer.params)
        if len(weights) != 2 * n:
            raise TaggerError(f"layer {self.name!r} expects {2 * n} weight arrays, got {len(weights)}")
        self.forward_layer.set_weights(weights[:n])
        self.backward_layer.set_weights(weights[n:])

    def compute_output_shape(self, input_shape):
        fw = self.forward_layer.compute_output_shape(input_shape)
        out = fw[0] if self.return_state else fw
        if self.merge_mode == "concat":
            out = tuple(out[:-1]) + (2 * out[-1],)
        if self.return_state:
            st = fw[1]
            return [out, st, st, st, st]
        return out

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None

    def forward(self, x, mask=None, train=True):
        self.ensure_built(tuple(x.shape))
        ops = self.ops
        fw, bw = self.forward_layer, self.backward_layer
        pair = getattr(ops, "lstm_forward_pair", None)
        if pair is not None and not self.return_state:
            # the two directions are independent until the merge: the backend runs them
            # concurrently (two threads) when it has the cores
            (yf, back_f), (yb, back_b) = _lstm_pair(ops, fw, bw, x, mask, train)
        else:
            yf, back_f = fw.forward(x, mask, train)
            yb, back_b = bw.forward(x, mask, train)
        of = yf[0] if self.return_state else yf
        ob = yb[0] if self.return_state else yb
        out = ops.merge_forward(of, ob, self.merge_mode)

        def backprop(dy):
            if self.return_state:
                dout, dhf, dcf, dhb, dcb = dy
            else:
                dout = dy
            dof, dob = ops.merge_backward(dout, of, ob, self.merge_mode)
            if getattr(back_f, "pairable", False):
                dxf, dxb = ops.lstm_backward_pair(back_f.args(dof), back_b.args(dob))
            elif self.return_state:
                dxf = back_f([dof, dhf, dcf])
                dxb = back_b([dob, dhb, dcb])
            else:
                dxf = back_f(dof)
                dxb = back_b(dob)
            return _add(ops, dxf, dxb)

        if self.return_state:
            return [out, yf[1], yf[2], yb[1], yb[2]], backprop
        return out, backprop

    def projection_pays(self, embedding, shape):
        """Whether to predict through the projected tables now.

        A table costs V rows of the input GEMM; the plain path costs one row per token.
        Like renting skis before buying them, keep to the plain path until the tokens
        predicted with the current weights reach V, then build the tables: never more
        than twice the cheaper choice, whether the weights change every batch (evaluation
        during training) or never (prediction).
        """
        key = (id(embedding), embedding.version, self.forward_layer.version, self.backward_layer.version)
        if getattr(self, "_projection_key", None) == key:
            return True
        if getattr(self, "_plain_key", None) != key:
            self._plain_key, self._plain_tokens = key, 0
        self._plain_tokens += int(np.prod(shape))
        if self._plain_tokens >= embedding.input_dim:
            self._projection_key = key
            return True
        return False

    def infer_from_ids(self, embedding, ids, mask):
        """Inference straight from token ids: each direction looks its input projection up
        in a table P = embeddings @ kernel (V, 4H), computed once per weight version, instead
        of multiplying every token's vector (a third of the forward's arithmetic).
        Only for backends with lstm_forward_ids; equal to forward(embedding(ids)) otherwise."""
        ops = self.ops
        B, T = ids.shape
        starts, lengths = mask_to_spans(mask, B, T)
        args = []
        for lstm in (self.forward_layer, self.backward_layer):
            key = (id(embedding), embedding.version, lstm.version)
            if getattr(lstm, "_projection_key", None) != key:
                lstm._projection = ops.lstm_input_table(embedding.params[0], lstm.params[0])
                lstm._projection_key = key
            args.append((lstm._projection, ids, lstm.params[1], lstm.params[2], starts, lengths, lstm.go_backwards))
        (Yf, hf, _, _), (Yb, hb, _, _) = ops.lstm_forward_ids_pair(args[0], args[1])
        if self.return_sequences:
            return ops.merge_forward(Yf, Yb, self.merge_mode)
        return ops.merge_forward(hf, hb, self.merge_mode)


def _lstm_pair(ops, fw, bw, x, mask, train):
    """Both directions' forward through ops.lstm_forward_pair; returns ((y, backprop), ...)
    with backprops that Bidirectional can also run as a pair."""
    B, T, I = x.shape
    starts, lengths = mask_to_spans(mask, B, T)
    calls = []
    for lstm in (fw, bw):
        lstm.ensure_built(tuple(x.shape))
        in_mask = rec_mask = None
        if train and lstm.dropout > 0:
            in_mask = ops.dropout_mask((B, I), lstm.dropout, lstm.next_seed(), lstm.dtype)
        if train and lstm.recurrent_dropout > 0:
            rec_mask = ops.dropout_mask((B, lstm.units), lstm.recurrent_dropout, lstm.next_seed(), lstm.dtype)
        calls.append((x, *lstm.params, starts, lengths, lstm.go_backwards, in_mask, rec_mask))
    results = ops.lstm_forward_pair(calls[0], calls[1])
    out = []
    for lstm, (Y, h, c, cache) in zip((fw, bw), results):
        y = Y if lstm.return_sequences else h

        def backprop(dy, lstm=lstm, cache=cache):
            return ops.lstm_backward(*backprop.args(dy))

        def args(dy, lstm=lstm, cache=cache):
            if lstm.return_sequences:
                return (cache, dy, None, None, *lstm.grads)
            return (cache, None, dy, None, *lstm.grads)

        backprop.args = args
        backprop.pairable = True
        out.append((y, backprop))
    return out
