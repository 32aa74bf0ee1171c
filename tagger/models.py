"""Tagger (a label per token) and Classifier (a label per text), built from a config.

    tag:       ids (B, T) -> Embedding -> Dropout -> [BiLSTM, return_sequences] x L
               -> Dropout -> Dense(K)                       -> scores (B, T, K)
    classify:  the same, the last BiLSTM returns its final state -> Dense(C) -> (B, C)
               model.pooling max | mean: the last BiLSTM returns sequences (B, T, 2H)
               -> GlobalMaxPooling1D | GlobalAveragePooling1D over the real steps -> (B, 2H)
    model.crf: tag, then CRF(K) (identity in the stack): the Dense scores are the CRF's
               emissions; the loss is the CRF's, tags come from Viterbi decoding and
               their probabilities are the CRF's per-token marginals

A `Model` bundles the network with its vocabularies and resolved config: it encodes
examples, runs training steps, and predicts in input order.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tagger.data.batching import PaddedBatch, make_batches
from tagger.data.schemes import convert
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.io import check_network_fits
from tagger.layers import (CRF, LSTM, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential)

POOLING_LAYERS = {"max": GlobalMaxPooling1D, "mean": GlobalAveragePooling1D}


def build_network(mcfg, n_words, n_labels, ops="cpu", dtype=np.float32, seed=0, embeddings=None) -> Sequential:
    """The Sequential for `mcfg` (a ModelConfig); layer names are fixed so weight files match."""
    check_network_fits(mcfg, n_words, n_labels, dtype, copies=1)  # refuse before allocating
    classify = mcfg.task == "classify"
    pooled = classify and mcfg.pooling != "last"
    layers = [
        Embedding(
            n_words, mcfg.embedding_dim, mask_zero=True, weights=embeddings,
            trainable=not mcfg.freeze_embeddings, name="embedding",
        ),
        Dropout(mcfg.dropout, name="embedding_dropout"),
    ]
    for k in range(mcfg.layers):
        last = k == mcfg.layers - 1
        lstm = LSTM(
            mcfg.lstm_units,
            return_sequences=not (classify and last) or pooled,
            recurrent_dropout=mcfg.recurrent_dropout,
            name=f"lstm_{k + 1}",
        )
        layers.append(Bidirectional(lstm, merge_mode=mcfg.merge_mode, name=f"bilstm_{k + 1}"))
    if pooled:
        # An explicit seed (it draws nothing) takes none from the stack's seed sequence, so
        # the layers after it get the same seeds, and initial weights, as with pooling: last.
        layers.append(POOLING_LAYERS[mcfg.pooling](name="pooling", seed=0))
    layers += [Dropout(mcfg.dropout, name="output_dropout"), Dense(n_labels, name="output")]
    if mcfg.crf:  # appended last: the seeds (and weights) of the layers before it are unchanged
        layers.append(CRF(n_labels, name="crf"))
    return Sequential(layers, input_shape=(None,), seed=seed, ops=ops, dtype=dtype, name=mcfg.task)


class Model:
    """Network + vocabularies + resolved config: what a model directory holds."""

    def __init__(self, config, words: WordVocab, labels: LabelVocab, network: Sequential):
        self.config = config
        self.words = words
        self.labels = labels
        self.network = network

    @property
    def task(self) -> str:
        return self.config.model.task

    @property
    def ops(self):
        return self.network.ops

    @property
    def crf(self) -> CRF | None:
        """The network's CRF output layer, or None (softmax output)."""
        last = self.network.layers[-1] if self.network.layers else None
        return last if isinstance(last, CRF) else None

    # -- labels and schemes ----------------------------------------------------------
    @property
    def data_scheme(self) -> str:
        return self.config.data.scheme

    @property
    def train_scheme(self) -> str:
        return self.config.data.target_scheme or self.config.data.scheme

    def to_train_scheme(self, tags: Sequence[str]) -> list[str]:
        if self.train_scheme == self.data_scheme or self.data_scheme == "none":
            return list(tags)
        return convert(tags, self.data_scheme, self.train_scheme)

    def to_data_scheme(self, tags: Sequence[str]) -> list[str]:
        if self.train_scheme == self.data_scheme or self.data_scheme == "none":
            return list(tags)
        return convert(tags, self.train_scheme, self.data_scheme)

    # -- encoding ---------------------------------------------------------------------
    def encode(self, examples: Sequence[Example], with_labels=True):
        ids = self.words.encode_batch([ex.tokens for ex in examples])
        if not with_labels:
            return ids, None
        if self.task == "tag":
            labels = []
            for ex in examples:
                if ex.labels is None:
                    raise TaggerError(f"{ex.source or 'input'}: sentence has no labels")
                labels.append(self.labels.encode(self.to_train_scheme(ex.labels), fallback=self._fallback()))
        else:
            labels = []
            for ex in examples:
                if ex.label is None:
                    raise TaggerError(f"{ex.source or 'input'}: text has no label")
                labels.append(self.labels.encode_one(ex.label))
        return ids, labels

    def _fallback(self):
        # an entity type unseen in training is scored as a miss ("O"), never a crash
        return "O" if "O" in self.labels else None

    def batches(self, examples, batch_size, unit="sentences", shuffle=False, seed=0, with_labels=True):
        ids, labels = self.encode(examples, with_labels)
        return make_batches(ids, labels, batch_size=batch_size, unit=unit, shuffle=shuffle, seed=seed)

    # -- running ----------------------------------------------------------------------
    def train_step(self, batch: PaddedBatch) -> float:
        """Forward + backward on one batch; gradients accumulate in the network. Returns the loss."""
        ops = self.ops
        scores, backprop = self.network.forward(ops.asarray(batch.ids), train=True)
        crf = self.crf
        if crf is not None:  # host NumPy: the scores are only B*T*K
            loss, dscores = crf.loss(scores, batch.labels, batch.lengths)
            backprop(ops.asarray(dscores))
            return loss
        labels = ops.asarray(batch.labels)
        mask = batch.mask if self.task == "tag" else None
        loss, dscores = ops.softmax_xent(scores, labels, mask)
        backprop(dscores)
        return loss

    def probabilities(self, batch: PaddedBatch) -> np.ndarray:
        """Softmax scores (B, T, K) or (B, C) as NumPy, rows in batch order; with a CRF,
        the per-token tag marginals (0 at padded steps)."""
        return self._scores(batch)[1]

    def _scores(self, batch: PaddedBatch):
        """(best label ids (B, T) or (B,), probabilities) as NumPy: the argmax of the
        softmax, or with a CRF the Viterbi paths and the marginals."""
        ops = self.ops
        scores, _ = self.network.forward(ops.asarray(batch.ids), train=False)
        crf = self.crf
        if crf is not None:
            emissions = ops.to_numpy(scores)
            return crf.decode(emissions, batch.lengths), crf.marginals(emissions, batch.lengths)
        probs = np.asarray(ops.to_numpy(ops.softmax(scores)))
        return probs.argmax(axis=-1), probs

    def predict_examples(self, examples: Sequence[Example], batch_size=256):
        """Per example, in input order: (labels in the data's scheme, probabilities).

        tag: a list of tags and a list of per-tag probabilities; classify: a label and its
        probability. Empty sentences get empty predictions (tag) or are refused (classify).
        """
        examples = list(examples)
        out: list = [None] * len(examples)
        nonempty = [k for k, ex in enumerate(examples) if len(ex.tokens)]
        for k in set(range(len(examples))) - set(nonempty):
            if self.task == "classify":
                raise TaggerError(f"{examples[k].source or 'input'}: empty text cannot be classified")
            out[k] = ([], [])
        kept = [examples[k] for k in nonempty]
        for batch in self.batches(kept, batch_size, unit="sentences", with_labels=False):
            best, probs = self._scores(batch)
            for row, pos in enumerate(batch.index):
                k = nonempty[int(pos)]
                if self.task == "tag":
                    n = int(batch.lengths[row])
                    tags = self.to_data_scheme(self.labels.decode(best[row, :n]))
                    conf = probs[row, np.arange(n), best[row, :n]].tolist()
                    out[k] = (tags, conf)
                else:
                    out[k] = (self.labels.labels[int(best[row])], float(probs[row, best[row]]))
        return out

    def predict(self, texts: Iterable[str]) -> list[dict]:
        """Raw texts -> one dict each: tokens, offsets, tags, spans (tag) or label, probability (classify)."""
        from tagger.predict import examples_from_texts, prediction_record

        texts = list(texts)
        examples = examples_from_texts(texts)
        return [prediction_record(self, ex, pred) for ex, pred in zip(examples, self.predict_examples(examples))]

    # -- persistence ------------------------------------------------------------------
    def save(self, path, metrics=None):
        from tagger.io import save_model

        save_model(self, path, metrics)

    @classmethod
    def load(cls, path, device="cpu"):
        from tagger.io import load_model

        return load_model(path, device=device)
