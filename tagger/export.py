"""ONNX export: the network, from token ids and lengths to per-token or per-text scores.

    export_onnx(model, "model.onnx")     # model: tagger.load(...) / tagger.io.load_model(...)

Legend: B batch, T padded length, D embedding width, H LSTM units, F = 2H (concat) or H
(sum / ave / mul), K labels (tags or classes).

Graph inputs and outputs (opset 17, float32):

    ids      int64 (B, T)   word ids from the model's tokenizer.json, post-padded with 0 ([PAD])
    lengths  int32 (B,)     real tokens per row, 1 <= lengths[b] <= T
    scores   float (B, T, K) for task tag (the CRF's emissions when the model has one),
             float (B, K) for task classify
    probs    float, same shape: softmax of scores (not emitted for a CRF model, whose
             probabilities are marginals over tag sequences)

Graph: Gather (embedding) -> Transpose to (T, B, D) -> per BiLSTM layer one ONNX ``LSTM``
node, ``direction="bidirectional"``, ``sequence_lens=lengths`` -> merge the two
directions -> [pooling over the real steps] -> MatMul + Add (Dense).  Dropout is the
identity at inference and is left out.

Weight conversion (Keras layout -> ONNX LSTM):

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
The labels and the task are also in the ONNX metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError

OPSET = 17
MERGE_REDUCE = {"sum": "ReduceSum", "ave": "ReduceMean"}
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


def _pool(g, x, lengths64, mode):
    """(T, B, F) -> (B, F): max or mean over each row's real steps."""
    steps = g.op("Gather", [g.op("Shape", [x]), g.const("zero", np.array(0, np.int64))])
    t = g.op("Range", [g.const("start", np.array(0, np.int64)), steps, g.const("one", np.array(1, np.int64))])
    t = g.op("Unsqueeze", [t, g.const("axes", np.array([1], np.int64))])  # (T, 1)
    mask = g.op("Unsqueeze", [g.op("Less", [t, lengths64]), g.const("axes", np.array([2], np.int64))])  # (T, B, 1)
    if mode == "max":
        floor = g.const("neg_inf", np.array(-np.inf, np.float32))
        return g.op("ReduceMax", [g.op("Where", [mask, x, floor])], axes=[0], keepdims=0)
    total = g.op("ReduceSum", [g.op("Mul", [x, g.op("Cast", [mask], to=1)]), g.const("axes", np.array([0], np.int64))], keepdims=0)
    n = g.op("Unsqueeze", [g.op("Cast", [lengths64], to=1), g.const("axes", np.array([1], np.int64))])  # (B, 1)
    return g.op("Div", [total, n])


def _layers_to_graph(g, network, ids, lengths):
    """Walk the Sequential; return the name of the scores tensor and its CRF layer (or None)."""
    from tagger.layers import CRF, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D, GlobalMaxPooling1D

    lengths64 = g.op("Cast", [lengths], to=7)
    x, time_major, crf = None, False, None
    for layer in network.layers:
        if isinstance(layer, Embedding):
            table = layer.get_weights()[0].astype(np.float32)
            x, time_major = g.op("Transpose", [g.op("Gather", [g.const("embeddings", table), ids])], perm=[1, 0, 2]), True
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


def export_onnx(model, output) -> list[Path]:
    """Write the ONNX graph of ``model`` (a loaded tagger model) to ``output``; return the
    files written (the graph, and ``<stem>.crf.json`` for a CRF model)."""
    onnx, helper = _onnx()
    output = Path(output)
    if not output.parent.is_dir():
        raise TaggerError(f"export: folder {output.parent} does not exist")
    g = _Graph(helper)
    task, labels = model.task, list(model.labels.labels)
    scores, crf = _layers_to_graph(g, model.network, "ids", "lengths")
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
    score_shape = ["B", "T", len(labels)] if task == "tag" else ["B", len(labels)]
    outputs = [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, score_shape)]
    if crf is None:
        g.nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
        outputs.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, score_shape))
    inputs = [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["B", "T"]),
              helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, ["B"])]
    graph = helper.make_graph(g.nodes, f"tagger_{task}", inputs, outputs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tagger")
    helper.set_model_props(proto, {"task": task, "labels": json.dumps(labels), "padding_id": "0",
                                   "crf": "none" if crf is None else output.with_suffix(".crf.json").name})
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
