"""CharEncoder: one vector per word from its characters (Lample et al. 2016; Ma & Hovy 2016).

Legend: B sentences, W words (padded), C characters per word (padded), V character
vocabulary (id 0 = padding), D char_dim, N real words of the batch, Cn the longest of
them, F the output width: 2 * units ('lstm') or filters ('cnn').

    char ids (B, W, C) int, word spans (over W), char lengths (B, W)  ->  (B, W, F)

1. gather: the N real words (inside the word spans), sorted longest-first (stable), into
   one (N, Cn) batch of post-padded character sequences (host arrays: ids are host data);
2. Embedding(V, D) -> Dropout(dropout) on the character embeddings -> the encoder:
     'lstm'  Bidirectional(LSTM(units)) over each word's characters, return_sequences=False:
             the final forward state (after the last character) and the final backward
             state (after the first) concatenated, (N, 2 * units): Lample's char BiLSTM, on
             the project's one LSTM (tagger.layers.LSTM over ops.lstm_forward)
     'cnn'   Conv1D(filters, width, padding='same', activation='tanh') -> the max over each
             word's real positions (GlobalMaxPooling1D, ops.pool_forward): Ma & Hovy's CNN
3. scatter the (N, F) vectors back to (B, W, F) through ops.embedding_forward (a row gather
   that stays on the ops backend's device); padded words are exactly 0. The backward is
   the scatter-add ops.embedding_backward, restricted to the real words.
A real word with no characters (length 0) encodes to 0. Only real characters are read,
so neither padded words nor padded characters influence any output or gradient.
Weights (get_weights order): the character embeddings, then the encoder's (the forward
LSTM's three arrays and the backward LSTM's, or the Conv1D kernel and bias).
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import Spans

from .base import Layer, as_spans
from .conv import Conv1D
from .core import Dropout, Embedding
from .pooling import GlobalMaxPooling1D
from .recurrent import LSTM, Bidirectional

ENCODERS = ("lstm", "cnn")


def gather_words(ids, spans, char_lengths):
    """The real words of a (B, W, C) batch, longest first.

    Returns (chars (N, Cn) int64, lengths (N,) int64, index (B, W) int64, real (B, W) bool):
    word k of the gathered batch is the real word at the k-th True of `real` in longest-first
    order; index[b, w] is its row (0 at padded words)."""
    B, W, C = ids.shape
    real = spans.mask() if spans is not None else np.ones((B, W), bool)
    flat = np.flatnonzero(real.reshape(-1))
    lens = char_lengths.reshape(-1)[flat]
    order = np.argsort(-lens, kind="stable")  # longest first, like a packed sequence
    rows = flat[order]
    n_chars = max(int(lens.max()) if lens.size else 0, 1)
    chars = ids.reshape(B * W, C)[rows, :n_chars].astype(np.int64)
    lengths = lens[order].astype(np.int64)
    chars[np.arange(n_chars)[None, :] >= lengths[:, None]] = 0  # whatever followed the word
    index = np.zeros(B * W, dtype=np.int64)
    index[rows] = np.arange(rows.size)
    return chars, lengths, index.reshape(B, W), real


def check_char_lengths(ids, char_lengths):
    """(B, W) int64 character counts: given, or the nonzero prefix of each word's ids."""
    B, W, C = ids.shape
    if char_lengths is None:
        nonzero = ids != 0
        char_lengths = nonzero.sum(axis=-1)
        if not np.array_equal(nonzero, np.arange(C)[None, None, :] < char_lengths[..., None]):
            raise TaggerError("CharEncoder: char ids must be post-padded with 0 (or pass char_lengths)")
    char_lengths = np.asarray(char_lengths)
    if char_lengths.shape != (B, W) or char_lengths.dtype.kind not in "iu":
        raise TaggerError(f"CharEncoder: char_lengths must be (batch, words) = {(B, W)} integers, got {char_lengths.shape} {char_lengths.dtype}")
    if char_lengths.size and (char_lengths.min() < 0 or char_lengths.max() > C):
        raise TaggerError(f"CharEncoder: char_lengths must lie in 0..{C} (the padded characters per word)")
    return char_lengths.astype(np.int64)


class CharEncoder(Layer):
    """char ids (B, W, C) -> (B, W, F) word vectors from their characters (see module doc)."""

    config_keys = ("encoder", "char_vocab_size", "char_dim", "units", "filters", "width", "dropout")

    def __init__(self, encoder="lstm", char_vocab_size=None, char_dim=25, units=25, filters=30, width=3,
                 dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise TaggerError(f"CharEncoder encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if char_vocab_size is None or int(char_vocab_size) < 2:
            raise TaggerError(f"CharEncoder char_vocab_size must be >= 2 (padding and unknown), got {char_vocab_size!r}")
        self.encoder, self.char_vocab_size, self.char_dim = encoder, int(char_vocab_size), int(char_dim)
        self.units, self.filters, self.width, self.dropout = int(units), int(filters), int(width), float(dropout)
        base = 0 if self.seed is None else int(self.seed)
        seed = (lambda k: None) if self.seed is None else (lambda k: base * 4 + k)
        common = dict(ops=self._ops, dtype=self.dtype)
        self.embedding = Embedding(self.char_vocab_size, self.char_dim, mask_zero=True, name=f"{self.name}_embedding",
                                   seed=seed(1), **common)
        self.drop = Dropout(self.dropout, name=f"{self.name}_dropout", seed=seed(2), **common)
        if encoder == "lstm":
            self.rnn = Bidirectional(LSTM(self.units, name=f"{self.name}_lstm", **common), seed=seed(3), **common)
            self.encoders = [self.rnn]
        else:
            self.conv = Conv1D(self.filters, self.width, padding="same", activation="tanh", name=f"{self.name}_conv",
                               seed=seed(3), **common)
            self.encoders = [self.conv, GlobalMaxPooling1D(name=f"{self.name}_pool", **common)]

    @property
    def output_dim(self):
        return 2 * self.units if self.encoder == "lstm" else self.filters

    # -- weights: the embedding's, then the encoder's (leaves, for optimisers) ------------
    def _children(self):
        return [self.embedding, self.drop, *self.encoders]

    def sublayers(self):
        leaves = [self.embedding]
        for layer in self.encoders:
            subs = layer.sublayers()
            leaves.extend(subs if subs else ([layer] if layer.params else []))
        return leaves

    params = property(lambda self: [p for leaf in self.sublayers() for p in leaf.params], lambda self, v: None)
    grads = property(lambda self: [g for leaf in self.sublayers() for g in leaf.grads], lambda self, v: None)
    param_names = property(lambda self: [n for leaf in self.sublayers() for n in leaf.param_names], lambda self, v: None)
    grad_rows = property(lambda self: [r for leaf in self.sublayers() for r in leaf.grad_rows], lambda self, v: None)

    def zero_grad(self):
        for leaf in self.sublayers():
            leaf.zero_grad()

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self.params):
            raise TaggerError(f"layer {self.name!r} expects {len(self.params)} weight arrays, got {len(weights)}")
        for leaf in self.sublayers():
            n = len(leaf.params)
            leaf.set_weights(weights[:n])
            weights = weights[n:]

    # -- shapes ---------------------------------------------------------------------------
    def build(self, input_shape):
        if len(input_shape) != 3:
            raise TaggerError(f"CharEncoder expects char ids of shape (batch, words, chars), got {tuple(input_shape)}")
        for layer in [*self._children(), *(s for c in self._children() for s in c.sublayers())]:
            layer.ops, layer.dtype = self._ops, self.dtype  # the backend and dtype chosen for this layer
        shape = (None, None)
        for layer in self._children():
            layer.ensure_built(shape)
            shape = layer.compute_output_shape(shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.output_dim)

    def output_spans(self, spans):
        return spans

    # -- running --------------------------------------------------------------------------
    def forward(self, x, spans=None, train=True, mask=None, char_lengths=None):
        """`spans` (or a Keras `mask`) over the words; char_lengths (B, W), or None: the
        nonzero prefix of each word's ids."""
        return self.call(x, as_spans(spans if mask is None else mask, tuple(x.shape)), train, char_lengths)

    def __call__(self, x, mask=None, char_lengths=None):
        """Inference; NumPy in, NumPy out (`mask` over the words, as Keras)."""
        y, _ = self.forward(x, mask=mask, train=False, char_lengths=char_lengths)
        return np.asarray(self.ops.to_numpy(y))

    def call(self, x, spans, train, char_lengths=None):
        self.check_input(x, (3,), "char ids of shape (batch, words, chars)")
        ids = np.asarray(self.ops.to_numpy(x))
        if ids.dtype.kind not in "iu":
            raise TaggerError(f"layer {self.name!r}: char ids must be integers, got {ids.dtype}")
        self.ensure_built(ids.shape)
        lengths = check_char_lengths(ids, char_lengths)
        chars, clen, index, real = gather_words(ids, spans, lengths)
        ops = self.ops
        B, W, _ = ids.shape
        if chars.shape[0] == 0:  # no real word: nothing to encode, nothing to learn from
            return ops.zeros((B, W, self.output_dim), self.dtype), lambda dy: None
        # one Spans of the gathered words' characters, handed to every layer after the embedding
        char_spans = Spans.from_lengths(clen, chars.shape[1])
        h, backs = chars, []
        for layer in self._children():
            h, back = layer.forward(h, char_spans, train)
            backs.append(back)
        keep = ops.asarray(real[..., None].astype(self.dtype))
        out = ops.mul(ops.embedding_forward(h, index), keep)  # (B, W, F), 0 at padded words (index: host ints)

        def backprop(dy):
            dh = ops.zeros(tuple(h.shape), self.dtype)
            ops.embedding_backward(dh, dy, index, real)
            for back in reversed(backs):
                dh = back(dh)
            return None

        return out, backprop
