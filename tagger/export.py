"""ONNX export: the network, from token ids and lengths (and, with model.chars, each word's
character ids) to per-token or per-text scores.

    export_onnx(model, "model.onnx")     # model: tagger.load(...) / tagger.io.load_model(...)

Legend: B batch, T padded length, D embedding width, H LSTM units, F = 2H (concat) or H
(sum / ave / mul), K labels (tags or classes). With a character encoder: C padded
characters per word, N = B * T words, Dc char_dim, H' the char LSTM's units, Fc the
features per word (2H' for 'lstm', filters for 'cnn'), Kw the CNN's width.

Graph inputs and outputs (opset 17, float32):

    ids          int64 (B, T)     word ids from the model's tokenizer.json, post-padded with 0 ([PAD])
    lengths      int32 (B,)       real tokens per row, 1 <= lengths[b] <= T
    chars        int64 (B, T, C)  only with model.chars: each word's character ids from the model
                                  folder's chars.json (tagger.data.chars.CharVocab: unseen
                                  characters -> 1 [UNK]), post-padded with 0 ([PAD])
    char_lengths int32 (B, T)     only with model.chars: characters per word, 0 at padded words
    scores   float (B, T, K) for task tag (the CRF's emissions when the model has one),
             float (B, K) for task classify
    probs    float, same shape: softmax of scores (not emitted for a CRF model, whose
             probabilities are marginals over tag sequences)

A model without characters has exactly the first two inputs.

Graph: Gather (embedding) -> Transpose to (T, B, D) -> per BiLSTM layer one ONNX ``LSTM``
node, ``direction="bidirectional"``, ``sequence_lens=lengths`` -> merge the two
directions -> [pooling over the real steps] -> MatMul + Add (Dense).  Dropout is the
identity at inference and is left out.

With model.chars (first layer WordFeatures) D = E + Fc: Concat([word embedding (B, T, E);
char features (B, T, Fc)], last axis), WordFeatures' order, before the Transpose. The char
features (CharEncoder), over the N words at once:

* Gather the char embedding table over ``chars`` flattened to (N, C) -> (N, C, Dc);
* 'lstm': Transpose to (C, N, Dc) -> one bidirectional ``LSTM`` node (the weights converted
  as below), ``sequence_lens`` = char_lengths flattened, clamped to >= 1 (ONNX leaves a
  length of 0 to the runtime) -> ``Y_h`` (2, N, H') merged like the char Bidirectional
  (concat: [forward final; backward final]);
* 'cnn': the embeddings at padded characters set to 0 (Where), Transpose to NCW (N, Dc, C)
  -> ``Conv`` with W (Fc, Dc, Kw) = the Keras kernel (Kw, Dc, Fc) transposed, ``pads`` =
  [(Kw - 1) // 2, Kw - 1 - (Kw - 1) // 2] (Keras 'same': an even Kw's extra zero on the
  right) -> Tanh -> the max over each word's real characters (Where -inf elsewhere);
* 0 where char_lengths == 0 (padded words, and real words without characters: CharEncoder's
  output there), reshaped to (B, T, Fc).

Weight conversion (Keras layout -> ONNX LSTM; the word and the char LSTMs alike):

* gate order: Keras blocks the 4H columns as i, f, c, o; ONNX as i, o, f, c.
* ``W`` (2, 4H, D) = kernel (D, 4H) reordered and transposed; ``R`` (2, 4H, H) likewise from
  the recurrent kernel; direction 0 is the forward layer, 1 the go_backwards one.
* ``B`` (2, 8H) = [Wb, Rb]: Keras has one bias, so Wb = the reordered bias and Rb = 0.
* ONNX's reverse direction starts at each row's last real step (``sequence_lens``), and
  ``Y_h`` holds the forward state after the last real token and the reverse state after
  the first token: exactly the final states of our LSTM whatever the padding.

A CRF model also gets ``<output stem>.crf.json``: labels, ``transitions`` (K, K) from tag i
to tag j, ``start`` (K,) and ``end`` (K,), the decoding rule (Viterbi over the first
lengths[b] rows of ``scores``), and for a span scheme ``allowed``: booleans ``start`` (K,),
``transitions`` (K, K), ``end`` (K,), the tag grammar decoding keeps to (docs/crf.md).

ONNX metadata: ``task``, ``labels`` (JSON), ``padding_id``, ``crf`` (the sidecar's name or
"none") and ``chars``: "none", or JSON {"inputs": ["chars", "char_lengths"], "vocabulary":
"chars.json" (in the model folder; exporting does not copy it), "encoder", "padding_id",
"unknown_id", "encoding" (how to fill the two inputs)}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError

OPSET = 17
MERGE_REDUCE = {"sum": "ReduceSum", "ave": "ReduceMean"}
CONV_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid", "linear": None}
CHARS_ENCODING = (
    "chars[b, t, :] holds word t's character ids from the model folder's chars.json "
    "(tagger.data.chars.CharVocab: NFC code points, ids 2.. in the file's order, unknown characters -> unknown_id, "
    "words longer than its max_chars cut to their first ceil(k/2) and last floor(k/2) characters), "
    "post-padded with padding_id; char_lengths[b, t] is how many, 0 at padded words"
)
CRF_DECODING = (
    "score(y) = start[y_0] + sum_t scores[b, t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}], "
    "n = lengths[b]; the predicted tags are the argmax of score(y) over tag sequences of length n "
    "(Viterbi), and labels[y_t] names them; when `allowed` is present, only sequences whose first tag "
    "(allowed.start), every transition (allowed.transitions[y_{t-1}][y_t]) and last tag (allowed.end) "
    "it marks true are considered: the tag grammar of the model's span scheme"
)


def _onnx():
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise TaggerError("export needs the onnx package; install it with pip install 'tagger[onnx]'") from None
    return onnx, helper


def keras_to_onnx_gates(w: np.ndarray) -> np.ndarray:
    """Reorder the last axis (4H) from Keras' i, f, c, o blocks to ONNX's i, o, f, c."""
    i, f, c, o = np.split(w, 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1)


def lstm_onnx_weights(forward_weights, backward_weights):
    """(W (2, 4H, D), R (2, 4H, H), B (2, 8H)) float32 from the two directions' Keras weights."""
    Ws, Rs, Bs = [], [], []
    for kernel, recurrent, bias in (forward_weights, backward_weights):
        Ws.append(keras_to_onnx_gates(np.asarray(kernel)).T)
        Rs.append(keras_to_onnx_gates(np.asarray(recurrent)).T)
        Bs.append(np.concatenate([keras_to_onnx_gates(np.asarray(bias)), np.zeros_like(bias)]))  # Wb, Rb
    return tuple(np.stack(a).astype(np.float32) for a in (Ws, Rs, Bs))


class _Graph:
    """Collects nodes and initializers with fresh names."""

    def __init__(self, helper):
        self.helper, self.nodes, self.inits, self.count = helper, [], [], 0

    def name(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base, value):
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, n_out=1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs


def _merge(g, y, axis, mode):
    """Merge the direction axis of y (size 2) by concat / sum / ave / mul, dropping it."""
    if mode == "concat":
        shape = [0, 0, -1] if axis == 2 else [0, -1]  # 0 copies that dimension from y
        return g.op("Reshape", [y, g.const("shape", np.array(shape, np.int64))])
    axes = g.const("axes", np.array([axis], np.int64))
    if mode in MERGE_REDUCE:
        if mode == "sum":
            return g.op("ReduceSum", [y, axes], keepdims=0)
        return g.op("ReduceMean", [y], axes=[axis], keepdims=0)
    fw, bw = g.op("Split", [y], n_out=2, axis=axis)  # mul
    return g.op("Squeeze", [g.op("Mul", [fw, bw]), axes])


def _bilstm(g, layer, x, lengths):
    """x (T, B, I) -> (T, B, F) with return_sequences, else the final states (B, F)."""
    W, R, B = lstm_onnx_weights(layer.forward_layer.get_weights(), layer.backward_layer.get_weights())
    y, y_h = g.op(
        "LSTM", [x, g.const("W", W), g.const("R", R), g.const("B", B), lengths],
        n_out=2, direction="bidirectional", hidden_size=int(layer.forward_layer.units),
    )
    if layer.return_sequences:  # Y (T, 2, B, H) -> (T, B, 2, H)
        return g.op("Transpose", [y], perm=[0, 2, 1, 3]), True
    return g.op("Transpose", [y_h], perm=[1, 0, 2]), False  # Y_h (2, B, H) -> (B, 2, H)


def _axes(g, *axes):
    return g.const("axes", np.array(axes, np.int64))


def _steps(g, x, axis):
    """(S,) int64: 0 .. S - 1, S = x's size along `axis`."""
    size = g.op("Gather", [g.op("Shape", [x]), g.const("axis", np.array(axis, np.int64))])
    return g.op("Range", [g.const("start", np.array(0, np.int64)), size, g.const("one", np.array(1, np.int64))])


def _masked_max(g, x, mask, axis):
    """The max of x over `axis` where mask (broadcast to x) is true; -inf where nothing is."""
    floor = g.const("neg_inf", np.array(-np.inf, np.float32))
    return g.op("ReduceMax", [g.op("Where", [mask, x, floor])], axes=[axis], keepdims=0)


def _pool(g, x, lengths64, mode):
    """(T, B, F) -> (B, F): max or mean over each row's real steps."""
    t = g.op("Unsqueeze", [_steps(g, x, 0), _axes(g, 1)])  # (T, 1)
    mask = g.op("Unsqueeze", [g.op("Less", [t, lengths64]), _axes(g, 2)])  # (T, B, 1)
    if mode == "max":
        return _masked_max(g, x, mask, 0)
    total = g.op("ReduceSum", [g.op("Mul", [x, g.op("Cast", [mask], to=1)]), g.const("axes", np.array([0], np.int64))], keepdims=0)
    n = g.op("Unsqueeze", [g.op("Cast", [lengths64], to=1), g.const("axes", np.array([1], np.int64))])  # (B, 1)
    return g.op("Div", [total, n])


def _char_bilstm(g, rnn, x, lengths):
    """x (N, C, D) -> (N, F): the char BiLSTM's final states, merged like its Bidirectional."""
    # ONNX leaves a sequence of length 0 to the runtime: every word reads at least one step
    # here, and _char_features zeroes the words that have none
    at_least_one = g.op("Max", [lengths, g.const("one", np.array(1, np.int32))])
    y, _ = _bilstm(g, rnn, g.op("Transpose", [x], perm=[1, 0, 2]), at_least_one)  # (N, 2, H)
    return _merge(g, y, 1, rnn.merge_mode)


def _char_cnn(g, conv, x, lengths64):
    """x (N, C, D) -> (N, F): Conv1D 'same' over each word's real characters, then their max."""
    from tagger.ops._conv_reference import left_pad

    if conv.padding != "same" or conv.activation not in CONV_ACTIVATIONS:
        raise TaggerError(f"export: Conv1D {conv.name!r} with padding {conv.padding!r} and activation "
                          f"{conv.activation!r} has no ONNX conversion (the character CNN is 'same' + tanh)")
    real = g.op("Less", [_steps(g, x, 1), g.op("Unsqueeze", [lengths64, _axes(g, 1)])])  # (N, C): c < length
    # 'same' reads zeros past a word's end, whatever the padded ids embed to
    x = g.op("Where", [g.op("Unsqueeze", [real, _axes(g, 2)]), x, g.const("zero", np.array(0, np.float32))])
    weights = conv.get_weights()  # kernel (Kw, D, F) [, bias (F,)]
    Kw, pl = int(conv.kernel_size), left_pad(conv.kernel_size, conv.padding)
    inputs = [g.op("Transpose", [x], perm=[0, 2, 1]),  # NCW: (N, D, C)
              g.const("conv_kernel", np.transpose(weights[0], (2, 1, 0)).astype(np.float32))]  # (F, D, Kw)
    if len(weights) > 1:
        inputs.append(g.const("conv_bias", weights[1].astype(np.float32)))
    y = g.op("Conv", inputs, kernel_shape=[Kw], pads=[pl, Kw - 1 - pl])  # (N, F, C)
    if CONV_ACTIVATIONS[conv.activation] is not None:
        y = g.op(CONV_ACTIVATIONS[conv.activation], [y])
    return _masked_max(g, y, g.op("Unsqueeze", [real, _axes(g, 1)]), 2)


def _char_features(g, encoder, chars, char_lengths):
    """CharEncoder: chars (B, T, C), char_lengths (B, T) -> (B, T, F), 0 at words without characters."""
    lengths = g.op("Reshape", [char_lengths, g.const("shape", np.array([-1], np.int64))])  # (N,) int32, N = B * T
    table = encoder.embedding.get_weights()[0].astype(np.float32)  # (V, D)
    x = g.op("Gather", [g.const("char_embeddings", table), g.op("Flatten", [chars], axis=2)])  # (N, C, D)
    if encoder.encoder == "lstm":
        feats = _char_bilstm(g, encoder.rnn, x, lengths)
    else:
        feats = _char_cnn(g, encoder.conv, x, g.op("Cast", [lengths], to=7))
    has = g.op("Unsqueeze", [g.op("Greater", [lengths, g.const("zero", np.array(0, np.int32))]), _axes(g, 1)])  # (N, 1)
    feats = g.op("Where", [has, feats, g.const("zero", np.array(0, np.float32))])  # padded words too, as CharEncoder
    shape = g.op("Concat", [g.op("Shape", [char_lengths]), g.const("width", np.array([-1], np.int64))], axis=0)
    return g.op("Reshape", [feats, shape])  # (B, T, F)


def _first_stage(g, layer, inputs):
    """The word Embedding, or WordFeatures [word embedding; char features]: time-major (T, B, E [+ F])."""
    from tagger.layers import WordFeatures

    embedding = layer.embedding if isinstance(layer, WordFeatures) else layer
    x = g.op("Gather", [g.const("embeddings", embedding.get_weights()[0].astype(np.float32)), inputs["ids"]])
    if isinstance(layer, WordFeatures):
        feats = _char_features(g, layer.char_encoder, inputs["chars"], inputs["char_lengths"])
        x = g.op("Concat", [x, feats], axis=-1)
    return g.op("Transpose", [x], perm=[1, 0, 2])


def _layers_to_graph(g, network, inputs):
    """Walk the Sequential over the graph inputs (ids, lengths [, chars, char_lengths]: name ->
    tensor name); return the name of the scores tensor and its CRF layer (or None)."""
    from tagger.layers import (CRF, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                               GlobalMaxPooling1D, WordFeatures)

    lengths = inputs["lengths"]
    lengths64 = g.op("Cast", [lengths], to=7)
    x, time_major, crf = None, False, None
    for layer in network.layers:
        if isinstance(layer, (Embedding, WordFeatures)):
            x, time_major = _first_stage(g, layer, inputs), True
        elif isinstance(layer, Bidirectional):
            x, sequences = _bilstm(g, layer, x, lengths)
            x = _merge(g, x, 2 if sequences else 1, layer.merge_mode)
            time_major = sequences
        elif isinstance(layer, (GlobalMaxPooling1D, GlobalAveragePooling1D)):
            x, time_major = _pool(g, x, lengths64, "max" if isinstance(layer, GlobalMaxPooling1D) else "mean"), False
        elif isinstance(layer, Dense):
            if time_major:
                x, time_major = g.op("Transpose", [x], perm=[1, 0, 2]), False
            weights = [w.astype(np.float32) for w in layer.get_weights()]  # kernel (F, K) [, bias (K,)]
            x = g.op("MatMul", [x, g.const("kernel", weights[0])])
            if len(weights) > 1:
                x = g.op("Add", [x, g.const("bias", weights[1])])
            if layer.activation not in (None, "linear"):
                raise TaggerError(f"export: Dense activation {layer.activation!r} is not supported")
        elif isinstance(layer, CRF):
            crf = layer
        elif not isinstance(layer, Dropout):
            raise TaggerError(f"export: layer {layer.name!r} ({type(layer).__name__}) has no ONNX conversion")
    return x, crf


def _char_encoder(network):
    """The network's CharEncoder (its first stage is WordFeatures), or None."""
    from tagger.layers import WordFeatures

    first = network.layers[0] if network.layers else None
    return first.char_encoder if isinstance(first, WordFeatures) else None


def _chars_props(encoder):
    """What a consumer needs to feed the character inputs (the metadata's "chars")."""
    from tagger.data.chars import PAD_ID, UNK_ID

    return {"inputs": ["chars", "char_lengths"], "vocabulary": "chars.json", "encoder": encoder.encoder,
            "padding_id": PAD_ID, "unknown_id": UNK_ID, "encoding": CHARS_ENCODING}


def export_onnx(model, output) -> list[Path]:
    """Write the ONNX graph of ``model`` (a loaded tagger model) to ``output``; return the
    files written (the graph, and ``<stem>.crf.json`` for a CRF model)."""
    onnx, helper = _onnx()
    output = Path(output)
    if not output.parent.is_dir():
        raise TaggerError(f"export: folder {output.parent} does not exist")
    g = _Graph(helper)
    task, labels = model.task, list(model.labels.labels)
    inputs = [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["B", "T"]),
              helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, ["B"])]
    encoder = _char_encoder(model.network)
    if encoder is not None:
        inputs += [helper.make_tensor_value_info("chars", onnx.TensorProto.INT64, ["B", "T", "C"]),
                   helper.make_tensor_value_info("char_lengths", onnx.TensorProto.INT32, ["B", "T"])]
    scores, crf = _layers_to_graph(g, model.network, {i.name: i.name for i in inputs})
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
    score_shape = ["B", "T", len(labels)] if task == "tag" else ["B", len(labels)]
    outputs = [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, score_shape)]
    if crf is None:
        g.nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
        outputs.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, score_shape))
    graph = helper.make_graph(g.nodes, f"tagger_{task}", inputs, outputs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tagger")
    helper.set_model_props(proto, {"task": task, "labels": json.dumps(labels), "padding_id": "0",
                                   "crf": "none" if crf is None else output.with_suffix(".crf.json").name,
                                   "chars": "none" if encoder is None else json.dumps(_chars_props(encoder))})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(output))
    written = [output]
    if crf is not None:
        transitions, start, end = crf.get_weights()
        sidecar = {"labels": labels, "transitions": transitions.tolist(), "start": start.tolist(),
                   "end": end.tolist(), "decoding": CRF_DECODING}
        allowed = model.labeller.head.allowed  # the tag grammar tagger decodes within, or None
        if allowed is not None:
            sidecar["allowed"] = {k: ok.tolist() for k, ok in zip(("start", "transitions", "end"), allowed)}
        written.append(output.with_suffix(".crf.json"))
        written[-1].write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return written
