"""LSTM and Bidirectional with Keras semantics over the ops backends.

Legend: B batch, T timesteps, I input features, H units, G = 4H.
Weights (Keras layout): kernel (I, G), recurrent_kernel (H, G), bias (G,); gate order
i, f, c, o; glorot-uniform kernel, orthogonal recurrent kernel, forget-gate bias 1.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops.reference import MERGE_MODES

from .base import Layer, get_initializer, spans_of

# activations of the LSTM gates (Keras names; None means linear)
LSTM_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")


class LSTM(Layer):
    """Long short-term memory over (B, T, I) input, padding- and mask-aware.

    return_sequences=True -> (B, T, H), else the final state (B, H).
    return_state=True -> [output, h, c] like Keras.
    go_backwards=True reads each sequence from its last real token to its first. Unlike
    Keras, which returns the reversed sequence, the outputs are aligned with the input
    time steps: y[:, t] is the state after reading x[:, t] (so a Bidirectional merge needs
    no flip, and padded steps stay where the padding is).
    The final state is the state at the last real token (forward) or after the first
    token (go_backwards), whatever the padding side.

    activation (candidate and output, default tanh) and recurrent_activation (gates i, f,
    o, default sigmoid): one of LSTM_ACTIVATIONS (None = linear, as in Keras).
    use_bias=False: no bias weight (Keras: two weights instead of three).
    kernel_initializer / recurrent_initializer / bias_initializer: Keras names (see
    layers.base.INITIALIZERS) or a callable f(shape); unit_forget_bias sets the forget
    gate's bias to 1, as Keras does.

    Dropout, and how it differs from Keras: `dropout` scales the inputs and
    `recurrent_dropout` the state h before the recurrent kernel, each with ONE mask per
    sequence shared by all time steps and by all four gates. Keras 3 does the same when
    only `dropout` is set (its fused implementation 2); when `recurrent_dropout` is set it
    switches to implementation 1 and draws four independent masks per sequence, one per
    gate, for the inputs and for h. tagger keeps the one shared mask (the input projection
    stays one GEMM for all gates); the expected value is the same, the noise is correlated
    across gates. The random draws themselves differ from Keras' in any case.
    """

    config_keys = (
        "units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
        "recurrent_initializer", "bias_initializer", "unit_forget_bias", "dropout",
        "recurrent_dropout", "return_sequences", "return_state", "go_backwards",
    )

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        dropout=0.0,
        recurrent_dropout=0.0,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for what, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise TaggerError(f"LSTM {what} must be in [0, 1), got {rate}")
        if int(units) < 1:
            raise TaggerError(f"LSTM units must be a positive integer, got {units}")
        for what, act in (("activation", activation), ("recurrent_activation", recurrent_activation)):
            if (act or "linear") not in LSTM_ACTIVATIONS:
                raise TaggerError(f"LSTM {what}: unknown activation {act!r}; choose one of {', '.join(LSTM_ACTIVATIONS)}")
        for what, init in (("kernel_initializer", kernel_initializer), ("recurrent_initializer", recurrent_initializer),
                           ("bias_initializer", bias_initializer)):
            get_initializer(init, f"LSTM {what}")
        self.units = int(units)
        self.activation = activation or "linear"
        self.recurrent_activation = recurrent_activation or "linear"
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.unit_forget_bias = unit_forget_bias
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)

    def build(self, input_shape):
        I, H = input_shape[-1], self.units
        if I is None:
            raise TaggerError(f"layer {self.name!r} needs the feature size of its input")
        self.add_weight("kernel", get_initializer(self.kernel_initializer, "kernel")(self.rng, (I, 4 * H)))
        self.add_weight("recurrent_kernel", get_initializer(self.recurrent_initializer, "recurrent")(self.rng, (H, 4 * H)))
        if self.use_bias:
            init = get_initializer(self.bias_initializer, "bias")
            if self.unit_forget_bias:  # Keras: [init(H), ones(H), init(2H)]
                bias = np.concatenate([init(self.rng, (H,)), np.ones(H), init(self.rng, (2 * H,))])
            else:
                bias = init(self.rng, (4 * H,))
            self.add_weight("bias", bias)
        else:
            # the ops always add a bias: a constant zero one, which is not a weight
            self._zero_bias = self.ops.zeros((4 * H,), dtype=self.dtype)
            self._zero_bias_grad = self.ops.zeros((4 * H,), dtype=self.dtype)

    def _weights_for_ops(self):
        """(kernel, recurrent_kernel, bias) and their three gradient buffers, for the ops."""
        if self.use_bias:
            return tuple(self.params), tuple(self.grads)
        self.ops.fill_(self._zero_bias_grad, 0.0)
        return (*self.params, self._zero_bias), (*self.grads, self._zero_bias_grad)

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out, (B, self.units), (B, self.units)]
        return out

    def output_spans(self, spans):
        return spans if self.return_sequences else None

    # The one LSTM path: call() and Bidirectional both run `op_args` -> ops -> `outputs`,
    # so the checks, the dropout masks and the routing of the gradients exist once.
    def op_args(self, x, spans, train, initial_state=None):
        """The arguments of ops.lstm_forward for this call: checked input, spans, dropout
        masks, activations and the initial state [h0, c0] (or None: zeros)."""
        self.check_input(x, (3,), "input of shape (batch, timesteps, features)")
        self.ensure_built(tuple(x.shape))
        B, T, I = x.shape
        if I != self.params[0].shape[0]:
            raise TaggerError(f"layer {self.name!r} expects {self.params[0].shape[0]} features, got {I}")
        ops = self.ops
        starts, lengths = spans_of(spans, (B, T))
        in_mask = rec_mask = None
        if train and self.dropout > 0:
            in_mask = ops.dropout_mask((B, I), self.dropout, self.next_seed(), self.dtype)
        if train and self.recurrent_dropout > 0:
            rec_mask = ops.dropout_mask((B, self.units), self.recurrent_dropout, self.next_seed(), self.dtype)
        h0, c0 = self._initial_state(initial_state, B)
        weights, _ = self._weights_for_ops()
        # train False: no backward follows, so the backend may keep no cache (for_backward)
        return (x, *weights, starts, lengths, self.go_backwards, in_mask, rec_mask,
                self.activation, self.recurrent_activation, h0, c0, bool(train))

    def _initial_state(self, initial_state, batch):
        if initial_state is None:
            return None, None
        if len(initial_state) != 2:
            raise TaggerError(f"layer {self.name!r}: initial_state is [h, c], got {len(initial_state)} arrays")
        for what, state in zip("hc", initial_state):
            if tuple(state.shape) != (batch, self.units):
                raise TaggerError(
                    f"layer {self.name!r}: initial state {what} must have shape {(batch, self.units)}, got {tuple(state.shape)}"
                )
        return initial_state[0], initial_state[1]

    def outputs(self, result, initial_state=None):
        """(layer output, backward_args, state_grads) from ops.lstm_forward's (Y, h, c, cache).

        backward_args(dy) are the arguments of ops.lstm_backward for the gradient dy of the
        output (a list [dout, dh, dc] with return_state): with return_sequences dout is dY;
        without, dout is the gradient of the final h and adds to dh. With an initial state,
        state_grads [dh0, dc0] are the buffers the backward accumulates its gradient into."""
        ops = self.ops
        Y, h, c, cache = result
        out = Y if self.return_sequences else h
        state_grads = None
        if initial_state is not None:
            state_grads = [ops.zeros(tuple(h.shape), dtype=self.dtype) for _ in range(2)]

        def backward_args(dy):
            dout, dh, dc = dy if self.return_state else (dy, None, None)
            dY = dout if self.return_sequences else None
            if not self.return_sequences and dout is not None:
                dh = dout if dh is None else ops.merge_forward(dh, dout, "sum")
            return (cache, dY, dh, dc, *self._weights_for_ops()[1], *(state_grads or ()))

        return ([out, h, c] if self.return_state else out), backward_args, state_grads

    def call(self, x, spans, train, initial_state=None):
        """initial_state=[h0, c0] (Keras): backprop then returns [dx, dh0, dc0]."""
        ops = self.ops
        result = ops.lstm_forward(*self.op_args(x, spans, train, initial_state))
        out, backward_args, state_grads = self.outputs(result, initial_state)

        def backprop(dy):
            dx = ops.lstm_backward(*backward_args(dy))
            return dx if state_grads is None else [dx, *state_grads]

        return out, backprop


def _joined(attr):
    """A view of the forward then the backward layer's list `attr` (the assignment
    Layer.__init__ makes is ignored: the lists live in the two LSTMs)."""

    def get(self):
        return getattr(self.forward_layer, attr) + getattr(self.backward_layer, attr) if self.built else []

    return property(get, lambda self, value: None)


class Bidirectional(Layer):
    """Runs `layer` forward and a go_backwards copy of it, merging their outputs step by step.

    merge_mode: 'concat' (default, output width 2H), 'sum', 'ave' or 'mul' (width H).
    Weights: the forward layer's three arrays, then the backward layer's (Keras order).
    return_state=True -> [output, h_fw, c_fw, h_bw, c_bw] like Keras.
    """

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        if not isinstance(layer, LSTM) or not isinstance(backward_layer, (LSTM, type(None))):
            raise TaggerError("Bidirectional wraps LSTM layers (layer and backward_layer)")
        if merge_mode not in MERGE_MODES:
            raise TaggerError(f"unknown merge_mode {merge_mode!r}; choose one of {', '.join(MERGE_MODES)}")
        kwargs.setdefault("ops", layer._ops)
        kwargs.setdefault("dtype", layer.dtype)
        kwargs.setdefault("seed", layer.seed)
        super().__init__(**kwargs)
        self.merge_mode = merge_mode
        self.forward_layer = layer
        if backward_layer is None:
            # Keras: a copy of the layer's config with go_backwards=True
            config = {**layer.get_config(), "go_backwards": True, "seed": None}
            backward_layer = LSTM.from_config(config)
        _check_directions(layer, backward_layer)
        backward_layer.ops = layer.ops = self._ops
        self.backward_layer = backward_layer
        layer.name = f"forward_{layer.name}"
        backward_layer.name = f"backward_{backward_layer.name}"
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state

    def get_config(self):
        config = {k: v for k, v in super().get_config().items() if k != "seed" or v is not None}
        layer_config = {**self.forward_layer.get_config(), "name": self.forward_layer.name.removeprefix("forward_")}
        backward_config = {**self.backward_layer.get_config(), "name": self.backward_layer.name.removeprefix("backward_")}
        return {**config, "merge_mode": self.merge_mode,
                "layer": {"class_name": "LSTM", "config": layer_config},
                "backward_layer": {"class_name": "LSTM", "config": backward_config}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = LSTM.from_config(config.pop("layer")["config"])
        backward = config.pop("backward_layer", None)
        return cls(layer, backward_layer=None if backward is None else LSTM.from_config(backward["config"]), **config)

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
    params = _joined("params")
    grads = _joined("grads")
    grad_rows = _joined("grad_rows")

    @property
    def param_names(self):
        return [f"forward_{n}" for n in self.forward_layer.param_names] + [
            f"backward_{n}" for n in self.backward_layer.param_names
        ]

    @param_names.setter
    def param_names(self, value):
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

    def output_spans(self, spans):
        return spans if self.return_sequences else None

    def call(self, x, spans, train, initial_state=None):
        """initial_state=[h_fw, c_fw, h_bw, c_bw] (Keras: the first half for the forward
        layer); backprop then returns [dx, dh_fw, dc_fw, dh_bw, dc_bw]."""
        self.ensure_built(tuple(x.shape))
        ops = self.ops
        fw, bw = self.forward_layer, self.backward_layer
        if initial_state is not None and len(initial_state) != 4:
            raise TaggerError(f"layer {self.name!r}: initial_state is [h_fw, c_fw, h_bw, c_bw], got {len(initial_state)} arrays")
        state_f, state_b = (None, None) if initial_state is None else (initial_state[:2], initial_state[2:])
        # the two directions are independent until the merge: the backend may run the pair
        # concurrently (ops.CONCURRENT_PAIR); either way both go through LSTM's one path
        result_f, result_b = ops.lstm_forward_pair(fw.op_args(x, spans, train, state_f), bw.op_args(x, spans, train, state_b))
        yf, args_f, grads_f = fw.outputs(result_f, state_f)
        yb, args_b, grads_b = bw.outputs(result_b, state_b)
        of = yf[0] if self.return_state else yf
        ob = yb[0] if self.return_state else yb
        out = ops.merge_forward(of, ob, self.merge_mode)

        def backprop(dy):
            dout, states = (dy[0], dy[1:]) if self.return_state else (dy, None)
            dof, dob = ops.merge_backward(dout, of, ob, self.merge_mode)
            if self.return_state:
                dof, dob = [dof, states[0], states[1]], [dob, states[2], states[3]]
            dxf, dxb = ops.lstm_backward_pair(args_f(dof), args_b(dob))
            dx = ops.merge_forward(dxf, dxb, "sum")
            return dx if initial_state is None else [dx, *grads_f, *grads_b]

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

    def infer_from_ids(self, embedding, ids, spans):
        """Inference straight from token ids: each direction looks its input projection up
        in a table P = embeddings @ kernel (V, 4H), computed once per weight version, instead
        of multiplying every token's vector (a third of the forward's arithmetic).
        Only for backends with lstm_forward_ids; equal to forward(embedding(ids)) otherwise."""
        ops = self.ops
        (Yf, hf, _, _), (Yb, hb, _, _) = ops.lstm_forward_ids_pair(*self.ids_op_args(embedding, ids, spans))
        if self.return_sequences:
            return ops.merge_forward(Yf, Yb, self.merge_mode)
        return ops.merge_forward(hf, hb, self.merge_mode)

    def ids_op_args(self, embedding, ids, spans, initial_state=None):
        """(forward, backward) arguments of ops.lstm_forward_ids for infer_from_ids: the
        tables (built once per weight version), ids (B, T), the spans and the initial
        states [h_fw, c_fw, h_bw, c_bw] (or None: zeros; tagger.streaming carries them
        from block to block)."""
        ops = self.ops
        starts, lengths = spans_of(spans, ids.shape)
        states = (None, None, None, None) if initial_state is None else tuple(initial_state)
        args = []
        for lstm, (h0, c0) in zip((self.forward_layer, self.backward_layer), (states[:2], states[2:])):
            key = (id(embedding), embedding.version, lstm.version)
            if getattr(lstm, "_projection_key", None) != key:
                lstm._projection = ops.lstm_input_table(embedding.params[0], lstm.params[0])
                lstm._projection_key = key
            (_, recurrent, bias), _ = lstm._weights_for_ops()
            args.append((lstm._projection, ids, recurrent, bias, starts, lengths, lstm.go_backwards,
                         lstm.activation, lstm.recurrent_activation, h0, c0))
        return args[0], args[1]


def _check_directions(fw, bw):
    """Keras' refusals: the two layers read in opposite directions and agree on what they return."""
    if fw.go_backwards == bw.go_backwards:
        raise TaggerError(
            f"Bidirectional: the forward and backward layers need different go_backwards, both are {fw.go_backwards} "
            "(wrap a layer with go_backwards=False, and give backward_layer go_backwards=True)"
        )
    for attr in ("return_sequences", "return_state"):
        if getattr(fw, attr) != getattr(bw, attr):
            raise TaggerError(f"Bidirectional: the forward and backward layers need the same {attr}")
