"""Exact blockwise inference for one very long sentence, in memory linear in its length
with a small constant.

The whole-sentence forward of a BiLSTM keeps per token the input projections, gate
activations and states of both directions (~10 kB per token at H = 256); a 250k-token
line then needs gigabytes. Here the sentence is cut into blocks and every BiLSTM runs one
block at a time, carrying its state (h, c) from block to block through the LSTM ops'
initial state, so only the states at block boundaries are kept. The result is the whole-
sentence computation's: the same recurrence, step by step, from the same states.

Legend
------
    T          tokens of the sentence; block k covers tokens [a_k, b_k), a_k = k * BLOCK
    n_b        blocks, ceil(T / BLOCK);  n = b_k - a_k <= BLOCK, the tokens of one block
    L          BiLSTM layers (l = 0 .. L - 1);  H units;  I the width a layer reads
    F          the width a BiLSTM passes on (2H with merge_mode concat, else H)
    K          scores per token (tag), C scores per text (classify)
    state      [h, c], each (1, H) on the backend; None means zeros (the ops' default)
    fw[l][k]   the forward state of layer l before block k (after token a_k - 1)
    bw[l][k]   the backward state of layer l before block k in its reading order, i.e.
               after reading tokens T - 1 .. b_k (None for the last block)

The layers before the first Bidirectional (Embedding, Dropout: identity at inference,
WordFeatures: a word's embedding and the vector of its own characters) are position-wise,
so their output at block k is computed from the ids (and char ids) of block k alone.
The input of layer l at block k is recomputed from layer l - 1's boundary states (down to
the ids), so memory holds O(L) blocks of O(n x G) floats plus O(n_b x L x H) of states;
layer l is recomputed about 2 (L - l) times: fine for the L <= 3 of our configs.

Order of the work:
    for l < L - 1: a left-to-right forward sweep, then a right-to-left backward sweep,
                   each saving the state before every block;
    top layer:     the forward sweep, then
        tag:       one right-to-left pass running both directions per block (the backward
                   state carried, the forward state read from fw), the layers after the
                   BiLSTM (Dropout, Dense, CRF: position-wise) per block into a host
                   (T, K) array of scores;
        classify, pooling last: the backward sweep; the two final states, merged;
        classify, pooling max | mean: the backward sweep, then a left-to-right pass
                   pooling each block into a running max / a running sum in time order
                   (the order the pooling op sums in, so the mean is the op's).
The head then decodes the (1, T, K) or (1, C) scores exactly as for a batch of one
(softmax, or the CRF ops: Viterbi and marginals over T x K, ~70 bytes per token for K 17).

Where the blocked and the whole computation can differ: the GEMMs over n rows instead of
T rows (the input projection, the Dense) may round differently in BLAS for tiny n; tests
hold the probabilities to float32 rounding and the tags to equality.

`predict_long(model, example)` is what Model.predict_examples calls for an example of
more than THRESHOLD tokens; THRESHOLD and BLOCK are module attributes (tests lower them).
A network of another shape than build_network's (a layer this module does not know is
position-wise) is predicted whole, in a batch of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagger.layers import (CRF, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, WordFeatures, WordInputs)
from tagger.spans import Spans

# sentences with more tokens than this are predicted blockwise
THRESHOLD = 4096
# tokens per block: ~4 * BLOCK * 4H floats of LSTM workspace per layer (32 MB at H 256)
BLOCK = 2048

# layers whose output at a token depends on that token's input alone (at inference)
POSITIONWISE = (Embedding, Dropout, WordFeatures)
# layers that may follow the last BiLSTM (after an optional pooling)
TAIL = (Dropout, Dense, CRF)
POOLING = {GlobalMaxPooling1D: "max", GlobalAveragePooling1D: "mean"}


@dataclass(frozen=True)
class Plan:
    """A network cut into the parts the blockwise forward runs."""

    prefix: tuple  # position-wise layers before the first BiLSTM
    bilstms: tuple  # the Bidirectional layers, consecutive
    pooling: str | None  # "max" | "mean" pooling over time after the last BiLSTM
    tail: tuple  # the position-wise (or per-text) layers after them


def plan_of(network) -> Plan | None:
    """The Plan of a Sequential shaped like build_network's, else None."""
    layers = list(network.layers)
    first = next((i for i, layer in enumerate(layers) if isinstance(layer, Bidirectional)), None)
    if first is None:
        return None
    last = first
    while last + 1 < len(layers) and isinstance(layers[last + 1], Bidirectional):
        last += 1
    prefix, bilstms, rest = layers[:first], layers[first : last + 1], layers[last + 1 :]
    pooling = POOLING.get(type(rest[0])) if rest else None
    tail = rest[1:] if pooling else rest
    supported = (
        all(isinstance(layer, POSITIONWISE) for layer in prefix)
        and all(isinstance(layer, TAIL) for layer in tail)
        and all(b.return_sequences and not b.return_state for b in bilstms[:-1])
        and not bilstms[-1].return_state
        and (pooling is None or bilstms[-1].return_sequences)
    )
    return Plan(tuple(prefix), tuple(bilstms), pooling, tuple(tail)) if supported else None


def is_long(example) -> bool:
    return len(example.tokens) > THRESHOLD


def predict_long(model, example):
    """The prediction of one example, as model.labeller.decode gives it for a batch of one."""
    (batch,) = model.batches([example], 1, with_labels=False)
    plan = plan_of(model.network)
    if plan is None:  # not a shape this module knows: whole, but at least alone
        scores, _ = model.forward(batch, train=False)
    else:
        scores = network_scores(model.network, plan, model.network_input(batch))
    return model.labeller.decode(scores, batch, model.network)[0]


def network_scores(network, plan: Plan, inputs):
    """network.forward(inputs, train=False)'s scores for one unpadded sentence, blockwise.

    inputs: ids (1, T) host ints, or a WordInputs (ids, chars, char_lengths) of one
    sentence; returns (1, T, K) or (1, C) on the network's backend."""
    run = _Blockwise(network, plan, inputs if isinstance(inputs, WordInputs) else np.asarray(inputs))
    for layer in range(len(plan.bilstms) - 1):
        run.sweep(layer, forward=True)
        run.sweep(layer, forward=False)
    top = len(plan.bilstms) - 1
    final_fw = run.sweep(top, forward=True)
    if plan.pooling is None and plan.bilstms[top].return_sequences:
        return run.token_scores()
    final_bw = run.sweep(top, forward=False)
    if plan.pooling is None:  # the final states, merged as Bidirectional.call does
        merged = network.ops.merge_forward(final_fw[0], final_bw[0], plan.bilstms[top].merge_mode)
    else:
        merged = run.pooled()
    return _apply(plan.tail, merged, None)


def _apply(layers, x, spans):
    """The layers' inference outputs, as Sequential.call runs them."""
    for layer in layers:
        x, _ = layer.call(x, spans, False)
        spans = layer.output_spans(spans)
    return x


class _Blockwise:
    """One sentence's BiLSTM stack, a block at a time; see the module docstring."""

    def __init__(self, network, plan: Plan, inputs):
        self.ops = network.ops
        self.plan = plan
        self.ids = inputs if not isinstance(inputs, WordInputs) else inputs.ids  # (1, T)
        self.word_inputs = inputs if isinstance(inputs, WordInputs) else None
        T = int(self.ids.shape[1])
        self.bounds = [(a, min(T, a + BLOCK)) for a in range(0, T, BLOCK)]
        n_b, L = len(self.bounds), len(plan.bilstms)
        self.fw = [[None] * n_b for _ in range(L)]
        self.bw = [[None] * n_b for _ in range(L)]
        self.embedding = _projected_embedding(network, T)

    def spans(self, k) -> Spans:
        a, b = self.bounds[k]
        return Spans.full(1, b - a)

    def inputs(self, layer, k):
        """What BiLSTM `layer` reads at block k: (1, n, I) on the backend, or the ids
        (1, n) when the first BiLSTM reads projected tables."""
        if layer > 0:
            return self.outputs(layer - 1, k)[0]
        a, b = self.bounds[k]
        ids = self.ids[:, a:b]
        if self.embedding is not None:
            return ids
        if self.word_inputs is not None:  # the block's words with their characters
            w = self.word_inputs
            lengths = None if w.char_lengths is None else w.char_lengths[:, a:b]
            ids = WordInputs(ids, w.chars[:, a:b], lengths)
        return _apply(self.plan.prefix, ids, self.spans(k))

    def run(self, layer, k, state_f, state_b, which):
        """(forward result, backward result) of BiLSTM `layer` at block k from these
        initial states: ops.lstm_forward's (Y, h, c, cache), None for a direction not
        run (which: "forward" | "backward" | "both")."""
        bi = self.plan.bilstms[layer]
        x, spans = self.inputs(layer, k), self.spans(k)
        ops = self.ops
        if layer == 0 and self.embedding is not None:
            args = bi.ids_op_args(self.embedding, x, spans, [*(state_f or (None, None)), *(state_b or (None, None))])
            one, pair = ops.lstm_forward_ids, ops.lstm_forward_ids_pair
        else:
            args = (bi.forward_layer.op_args(x, spans, False, state_f), bi.backward_layer.op_args(x, spans, False, state_b))
            one, pair = ops.lstm_forward, ops.lstm_forward_pair
        if which == "both":
            return pair(*args)
        return (one(*args[0]), None) if which == "forward" else (None, one(*args[1]))

    def sweep(self, layer, forward: bool):
        """Run one direction of BiLSTM `layer` over every block in its reading order,
        saving the state before each block; returns the final state [h, c]."""
        saved = self.fw[layer] if forward else self.bw[layer]
        order = range(len(self.bounds)) if forward else reversed(range(len(self.bounds)))
        state = None
        for k in order:
            saved[k] = state
            if forward:
                result, _ = self.run(layer, k, state, None, "forward")
            else:
                _, result = self.run(layer, k, None, state, "backward")
            state = [result[1], result[2]]
        return state

    def outputs(self, layer, k, state_b=None, carried=False):
        """(merged outputs of BiLSTM `layer` at block k (1, n, F), the backward state after
        the block). The backward state before it is bw[layer][k], or `state_b` when
        `carried` (the right-to-left pass of the top layer keeps no bw)."""
        rf, rb = self.run(layer, k, self.fw[layer][k], state_b if carried else self.bw[layer][k], "both")
        return self.ops.merge_forward(rf[0], rb[0], self.plan.bilstms[layer].merge_mode), [rb[1], rb[2]]

    def token_scores(self):
        """The tail's per-token scores (1, T, K) on the backend: the top BiLSTM right to
        left, its backward state carried, each block's outputs through the tail."""
        top = len(self.plan.bilstms) - 1
        scores, state = None, None
        for k in reversed(range(len(self.bounds))):
            y, state = self.outputs(top, k, state, carried=True)
            block = np.asarray(self.ops.to_numpy(_apply(self.plan.tail, y, self.spans(k))))
            if scores is None:
                scores = np.empty((self.ids.shape[1], block.shape[-1]), dtype=block.dtype)
            a, b = self.bounds[k]
            scores[a:b] = block[0]
        return self.ops.asarray(scores[None])

    def pooled(self):
        """The top BiLSTM's outputs pooled over all T steps (1, F) on the backend, as
        ops.pool_forward gives it: a running max, or a running sum in time order / T."""
        top = len(self.plan.bilstms) - 1
        acc = None
        for k in range(len(self.bounds)):
            y = np.asarray(self.ops.to_numpy(self.outputs(top, k)[0]))[0]  # (n, F)
            if self.plan.pooling == "max":
                block = y.max(axis=0)
                acc = block if acc is None else np.maximum(acc, block)
            else:  # reducing axis 0 adds row after row, ((acc + y_0) + y_1) ...: the op's order
                start = np.zeros((1, y.shape[1]), y.dtype) if acc is None else acc[None]
                acc = np.add.reduce(np.concatenate([start, y]), axis=0)
        if self.plan.pooling == "mean":
            acc = acc / acc.dtype.type(self.ids.shape[1])
        return self.ops.asarray(acc[None])


def _projected_embedding(network, T):
    """The Embedding whose ids the first BiLSTM reads through projected tables, when
    Sequential.call would take that path for a (1, T) input (same decision, same count)."""
    if not network.projected_inference:
        return None
    fast = network._projected_prefix()
    if fast is None or not network.layers[fast[1]].projection_pays(fast[0], (1, T)):
        return None
    return fast[0]
