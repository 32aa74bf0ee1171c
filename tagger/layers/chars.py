"""CharEncoder: one vector per word from its characters (Lample et al. 2016; Ma & Hovy 2016).

Legend: B sentences, W words (padded), C characters per word (padded), V character
vocabulary (id 0 = padding), D char_dim, N real words of the batch, Cn the longest of
them, F the output width: 2 * units ('lstm') or filters ('cnn').

    char ids (B, W, C) int, word spans (over W), char lengths (B, W)  ->  (B, W, F)

1. gather: the N real words (inside the word spans), sorted longest-first (stable), into
   one (N, Cn) batch of post-padded character sequences (host arrays: ids are host data);
   at inference each distinct word once (distinct_words: the same features, fewer rows);
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

from dataclasses import dataclass

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import Spans

from .base import Layer, as_spans, deserialize, serialize
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


def distinct_words(chars, lengths, index):
    """gather_words' batch with each distinct word once (inference: a word's features
    depend on its characters alone). In 256-line batches of UD-EWT text the distinct words
    are 25-38 % of the tokens (mean 31 %), so the encoder runs on a third of the rows.
    Returns (chars (U, Cn), lengths (U,), index (B, W) into the U rows), the U words
    longest first."""
    if chars.shape[0] < 2:
        return chars, lengths, index
    uniq, first, inverse = np.unique(chars, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(-lengths[first], kind="stable")  # longest first again
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return uniq[order], lengths[first][order], rank[inverse.reshape(-1)][index]


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


def leaves_of(layers):
    """The weight-owning layers under `layers` (a Bidirectional -> its two LSTMs; layers
    without weights left out), in order: what optimisers, clipping and weight files walk."""
    out = []
    for layer in layers:
        subs = layer.sublayers()
        out.extend(subs if subs else ([layer] if layer.params else []))
    return out


class _Composite(Layer):
    """A layer whose weights live in its leaves (`sublayers()`): these views are derived
    from them, so they never go stale, and set_weights hands each leaf its share."""

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


class CharEncoder(_Composite):
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
        common = dict(ops=self._ops, dtype=self.dtype)
        self.embedding = Embedding(self.char_vocab_size, self.char_dim, mask_zero=True, name=f"{self.name}_embedding",
                                   **common)
        self.drop = Dropout(self.dropout, name=f"{self.name}_dropout", **common)
        if encoder == "lstm":
            # named, so checkpoints (dropout counters by layer name) match in a new process
            self.rnn = Bidirectional(LSTM(self.units, name=f"{self.name}_lstm", **common), name=f"{self.name}_bilstm",
                                     **common)
            self.encoders = [self.rnn]
        else:
            self.conv = Conv1D(self.filters, self.width, padding="same", activation="tanh", name=f"{self.name}_conv",
                               **common)
            self.encoders = [self.conv, GlobalMaxPooling1D(name=f"{self.name}_pool", **common)]

    @property
    def output_dim(self):
        return 2 * self.units if self.encoder == "lstm" else self.filters

    # -- weights: the embedding's, then the encoder's (leaves, for optimisers) ------------
    def _children(self):
        return [self.embedding, self.drop, *self.encoders]

    def sublayers(self):
        return leaves_of([self.embedding, *self.encoders])

    # -- shapes ---------------------------------------------------------------------------
    def build(self, input_shape):
        if len(input_shape) != 3:
            raise TaggerError(f"CharEncoder expects char ids of shape (batch, words, chars), got {tuple(input_shape)}")
        if self.seed is not None:  # set here, so a Sequential's seed (given after __init__) reaches them
            base = int(self.seed)
            self.embedding.seed, self.drop.seed, self.encoders[0].seed = base * 4 + 1, base * 4 + 2, base * 4 + 3
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
        if not train:
            chars, clen, index = distinct_words(chars, clen, index)
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


# ----------------------------------------------------------------------------------------
# WordFeatures: the first stage of a network with character features


@dataclass
class WordInputs:
    """The inputs of a WordFeatures stage, as one object a Sequential passes along like an
    array (`shape` is the ids' (B, T)): host arrays, moved to the device by the layers.

        ids          (B, T) int     word ids, 0 = padding
        chars        (B, T, C) int  each word's character ids, post-padded with 0
        char_lengths (B, T) int     characters per word (0 at padded words)
    """

    ids: np.ndarray
    chars: np.ndarray
    char_lengths: np.ndarray | None = None
    host_inputs = True  # Layer.__call__ hands it on as it is (no device copy of the whole)

    @property
    def shape(self):
        return tuple(self.ids.shape)


class WordFeatures(_Composite):
    """(word ids, char ids, char lengths) (B, T) -> (B, T, E + F): the word embedding and the
    character encoder's vector of each word, concatenated (ops.concat_forward).

    Position-wise: each word's output depends on its own id and characters only (the
    character encoder reads no neighbour), so the layers before the first BiLSTM stay
    token-local. Leaves (`sublayers`): the word Embedding, then the CharEncoder's (its
    character embedding, the char LSTMs or the Conv1D), so optimisers, clipping and the
    lazy embedding rows see every weight with no special case. Seeds: the word embedding
    takes this layer's own seed, so with one training seed the word embedding and every
    layer after this one start from the weights of the word-only network.
    """

    def __init__(self, embedding, char_encoder, **kwargs):
        if not isinstance(embedding, Embedding) or not isinstance(char_encoder, CharEncoder):
            raise TaggerError("WordFeatures(embedding, char_encoder): expects an Embedding and a CharEncoder")
        kwargs.setdefault("ops", embedding._ops)
        kwargs.setdefault("dtype", embedding.dtype)
        super().__init__(**kwargs)
        self.embedding, self.char_encoder = embedding, char_encoder

    def get_config(self):
        return {**super().get_config(), "embedding": serialize(self.embedding), "char_encoder": serialize(self.char_encoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(deserialize(config.pop("embedding")), deserialize(config.pop("char_encoder")), **config)

    def sublayers(self):
        return [self.embedding, *self.char_encoder.sublayers()]

    @property
    def output_dim(self):
        return self.embedding.output_dim + self.char_encoder.output_dim

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise TaggerError(f"WordFeatures expects word ids of shape (batch, timesteps), got {tuple(input_shape)}")
        if self.seed is not None:
            if self.embedding.seed is None:
                self.embedding.seed = int(self.seed)
            if self.char_encoder.seed is None:
                self.char_encoder.seed = int(np.random.SeedSequence([int(self.seed), 1]).generate_state(1)[0])
        for layer in (self.embedding, self.char_encoder):
            layer.ops, layer.dtype = self._ops, self.dtype
        self.embedding.ensure_built(tuple(input_shape))
        self.char_encoder.ensure_built(tuple(input_shape) + (None,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2]) + (self.output_dim,)

    def spans_from_ids(self, x):
        return self.embedding.spans_from_ids(x.ids if isinstance(x, WordInputs) else x)

    def __call__(self, x, mask=None):
        """Inference on a WordInputs; NumPy out."""
        y, _ = self.forward(x, mask=mask, train=False)
        return np.asarray(self.ops.to_numpy(y))

    def call(self, x, spans, train):
        if not isinstance(x, WordInputs):
            raise TaggerError(f"layer {self.name!r} expects WordInputs(ids, chars, char_lengths), got {type(x).__name__}; "
                              "a model with model.chars needs batches from Model.batches")
        ids, chars = np.asarray(self.ops.to_numpy(x.ids)), np.asarray(x.chars)
        if chars.ndim != 3 or chars.shape[:2] != ids.shape:
            raise TaggerError(f"layer {self.name!r}: chars must be (batch, timesteps, chars) = {ids.shape} + (C,), got {chars.shape}")
        self.ensure_built(ids.shape)
        if spans is None:
            spans = self.spans_from_ids(ids)
        words, back_words = self.embedding.call(ids, spans, train)
        feats, back_feats = self.char_encoder.call(chars, spans, train, x.char_lengths)
        widths = [self.embedding.output_dim, self.char_encoder.output_dim]
        ops = self.ops

        def backprop(dy):
            d_words, d_feats = ops.concat_backward(dy, widths)
            back_words(d_words)
            back_feats(d_feats)
            return None

        return ops.concat_forward([words, feats]), backprop
