"""The network and the task, built from a config; no I/O.

    tag:       ids (B, T) -> Embedding -> Dropout -> [BiLSTM, return_sequences] x L
               -> Dropout -> Dense(K)                       -> scores (B, T, K)
    model.chars (encoder lstm | cnn): the first stage is WordFeatures(Embedding, CharEncoder):
               (ids, char ids (B, T, C), char lengths) -> the word embedding ++ a vector
               of each word's characters (B, T, E + F), then the same Dropout -> BiLSTM...
               (tagger/layers/chars.py; encoder none builds exactly the network above)
    classify:  the same, the last BiLSTM returns its final state -> Dense(C) -> (B, C)
               model.pooling max | mean: the last BiLSTM returns sequences (B, T, 2H)
               -> GlobalMaxPooling1D | GlobalAveragePooling1D over the real steps -> (B, 2H)
    model.crf: tag, then CRF(K) (identity in the stack): the Dense scores are the CRF's
               emissions; the loss is the CRF's, tags come from Viterbi decoding and
               their probabilities are the CRF's per-token marginals

Which of these a network ends with is the task's answer (`tagger.tasks.head_spec`). A
`Model` bundles the network with its vocabularies, its task (`model.labeller`, a
TagTask or ClassifyTask) and the resolved config: it encodes examples, runs training
steps through `Model.forward` (the one place the network is called), predicts in input
order and scores. Saving and loading are tagger.io's, files to predict tagger.predict's.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial

import numpy as np

from tagger.data.batching import PaddedBatch, make_batches
from tagger.data.chars import CharVocab
from tagger.data.prepare import examples_from_texts
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger import streaming
from tagger.layers import (CRF, LSTM, Bidirectional, CharEncoder, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential, WordFeatures, WordInputs)
from tagger.tasks import Task, crf_of, head_spec, make_task

POOLING_LAYERS = {"max": GlobalMaxPooling1D, "mean": GlobalAveragePooling1D}


# ----------------------------------------------------------------------------------------
# sizes: checked against free memory before anything is allocated
def _bilstm_count(inputs: int, h: int) -> int:
    return 2 * (inputs * 4 * h + h * 4 * h + 4 * h)


def char_parameter_count(ccfg, n_chars: int) -> int:
    """Weights of the character encoder `ccfg` (a CharsConfig) describes; 0 for none."""
    if not ccfg.enabled:
        return 0
    encoder = _bilstm_count(ccfg.char_dim, ccfg.units) if ccfg.encoder == "lstm" else ccfg.width * ccfg.char_dim * ccfg.filters + ccfg.filters
    return n_chars * ccfg.char_dim + encoder


def parameter_count(mcfg, n_words: int, n_labels: int, n_chars: int = 0) -> int:
    """Weights of the network `mcfg` describes, without building it (n_chars: the
    character vocabulary's size, with model.chars)."""
    e, h = mcfg.embedding_dim, mcfg.lstm_units
    width = 2 * h if mcfg.merge_mode == "concat" else h  # what each BiLSTM passes on
    chars = getattr(mcfg, "chars", None)
    features = e + (chars.features if chars is not None else 0)  # what the first BiLSTM reads

    def bilstm(inputs):
        return _bilstm_count(inputs, h)

    count = n_words * e + bilstm(features) + (mcfg.layers - 1) * bilstm(width)
    count += char_parameter_count(chars, n_chars) if chars is not None else 0
    count += width * n_labels + n_labels
    if getattr(mcfg, "crf", False):
        count += n_labels * n_labels + 2 * n_labels
    return count


def available_memory() -> int:
    """Bytes this process may still allocate (MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


# weights, gradients and two Adam moments
COPIES_IN_TRAINING = 4


def check_network_fits(mcfg, n_words: int, n_labels: int, dtype=np.float32, copies: int = COPIES_IN_TRAINING, source="model",
                       n_chars: int = 0):
    """Refuse, before allocating anything, a network whose weights cannot fit in memory."""
    n = parameter_count(mcfg, n_words, n_labels, n_chars)
    need = n * np.dtype(dtype).itemsize * copies
    have = available_memory()
    if need > have:
        raise TaggerError(
            f"{source}: model.lstm_units {mcfg.lstm_units}, model.embedding_dim {mcfg.embedding_dim}, "
            f"model.layers {mcfg.layers} with {n_words} words make {n:,} weights ({need / 2**30:,.1f} GiB "
            f"with gradients and optimizer state), more than the {have / 2**30:,.1f} GiB of free memory; make them smaller"
        )
    return n


def word_stage(mcfg, n_words, embeddings=None, n_chars=None):
    """The first layer: the word Embedding, or with model.chars WordFeatures(Embedding,
    CharEncoder) (weights: embedding/..., then chars_embedding/..., forward_chars_lstm/...,
    backward_chars_lstm/... or chars_conv/...)."""
    embedding = Embedding(
        n_words, mcfg.embedding_dim, mask_zero=True, weights=embeddings,
        trainable=not mcfg.freeze_embeddings, name="embedding",
    )
    ccfg = mcfg.chars
    if not ccfg.enabled:
        return embedding
    if n_chars is None:
        raise TaggerError(f"model.chars.encoder {ccfg.encoder}: the network needs the character vocabulary's size (n_chars)")
    encoder = CharEncoder(ccfg.encoder, char_vocab_size=n_chars, char_dim=ccfg.char_dim, units=ccfg.units,
                          filters=ccfg.filters, width=ccfg.width, dropout=ccfg.dropout, name="chars")
    return WordFeatures(embedding, encoder, name="word_features")


def build_network(mcfg, n_words, n_labels, ops="cpu", dtype=np.float32, seed=0, embeddings=None, n_chars=None) -> Sequential:
    """The Sequential for `mcfg` (a ModelConfig); layer names are fixed so weight files match.
    n_chars: the character vocabulary's size (needed with model.chars, unused without)."""
    check_network_fits(mcfg, n_words, n_labels, dtype, copies=1, n_chars=n_chars or 0)  # refuse before allocating
    head = head_spec(mcfg)
    layers = [word_stage(mcfg, n_words, embeddings, n_chars), Dropout(mcfg.dropout, name="embedding_dropout")]
    for k in range(mcfg.layers):
        last = k == mcfg.layers - 1
        lstm = LSTM(
            mcfg.lstm_units,
            return_sequences=not last or head.sequences,
            recurrent_dropout=mcfg.recurrent_dropout,
            name=f"lstm_{k + 1}",
        )
        layers.append(Bidirectional(lstm, merge_mode=mcfg.merge_mode, name=f"bilstm_{k + 1}"))
    if head.pooling is not None:
        # An explicit seed (it draws nothing) takes none from the stack's seed sequence, so
        # the layers after it get the same seeds, and initial weights, as with pooling: last.
        layers.append(POOLING_LAYERS[head.pooling](name="pooling", seed=0))
    layers += [Dropout(mcfg.dropout, name="output_dropout"), Dense(n_labels, name="output")]
    if head.crf:  # appended last: the seeds (and weights) of the layers before it are unchanged
        layers.append(CRF(n_labels, name="crf"))
    return Sequential(layers, input_shape=(None,), seed=seed, ops=ops, dtype=dtype, name=mcfg.task)


class Model:
    """Network + vocabularies + task + resolved config: what a model directory holds.

    No I/O here (tagger.io saves and loads, tagger.predict reads and writes files).
    """

    def __init__(self, config, words: WordVocab, labels: LabelVocab, network: Sequential, chars: CharVocab | None = None):
        self.config = config
        self.words = words
        self.network = network
        self.labeller: Task = make_task(config, labels)
        if config.model.chars.enabled and chars is None:
            raise TaggerError(f"model.chars.encoder {config.model.chars.encoder}: the model needs its character vocabulary (chars=)")
        # the character vocabulary (model.chars), else None: batches then carry no characters
        self.chars = chars if config.model.chars.enabled else None

    @property
    def labels(self) -> LabelVocab:
        return self.labeller.labels

    @property
    def task(self) -> str:
        """The task's name ("tag" | "classify"), as saved in the weights' metadata."""
        return self.labeller.name

    @property
    def ops(self):
        return self.network.ops

    @property
    def crf(self) -> CRF | None:
        """The network's CRF output layer, or None (softmax output)."""
        return crf_of(self.network)

    # -- encoding ---------------------------------------------------------------------
    def encode(self, examples: Sequence[Example], with_labels=True):
        """(word ids per example, label ids per example or None)."""
        ids = self.words.encode_batch([ex.tokens for ex in examples])
        return ids, (self.labeller.encode(examples) if with_labels else None)

    def encode_chars(self, examples: Sequence[Example]):
        """Per example its (n_words, C_k) int32 character ids (post-padded with 0; from the
        raw tokens, unseen characters -> [UNK]), or None for a model without model.chars."""
        if self.chars is None:
            return None
        return self.chars.encode_each([ex.tokens for ex in examples])  # words cached across epochs

    def batches(self, examples, batch_size, unit="sentences", shuffle=False, seed=0, with_labels=True):
        examples = examples if isinstance(examples, Sequence) else list(examples)
        ids, labels = self.encode(examples, with_labels)
        return make_batches(ids, labels, batch_size=batch_size, unit=unit, shuffle=shuffle, seed=seed,
                            chars=self.encode_chars(examples))

    # -- running ----------------------------------------------------------------------
    def forward(self, batch: PaddedBatch, train: bool):
        """(scores (B, T, K) or (B, C) on the backend, backprop): every network call goes here.
        The host ids and the batch's spans go in as they are (the Embedding moves the ids);
        with model.chars the ids, char ids and char lengths go in together (WordInputs)."""
        return self.network.forward(self.network_input(batch), batch.spans, train=train)

    def network_input(self, batch: PaddedBatch):
        """What the network reads from a batch: the host ids (B, T), or with model.chars a
        WordInputs of the ids, char ids and char lengths."""
        if self.chars is None:
            return batch.ids
        if batch.chars is None:
            raise TaggerError("this model reads characters (model.chars) but the batch has none; build batches with Model.batches")
        return WordInputs(batch.ids, batch.chars, batch.char_lengths)

    def train_step(self, batch: PaddedBatch) -> float:
        """Forward + backward on one batch; gradients accumulate in the network. Returns the loss."""
        scores, backprop = self.forward(batch, train=True)
        loss, dscores = self.labeller.loss(scores, batch, self.network)
        backprop(dscores)
        return loss

    def probabilities(self, batch: PaddedBatch) -> np.ndarray:
        """Softmax scores (B, T, K) or (B, C) as NumPy, rows in batch order; with a CRF,
        the per-token tag marginals; per token, 0 at padded steps."""
        scores, _ = self.forward(batch, train=False)
        return self.labeller.head.decode(scores, batch, self.network)[1]

    def predict_examples(self, examples: Sequence[Example], batch_size=256, nbest: int | None = None):
        """Per example, in input order: (labels in the data's scheme, probabilities).

        tag: a list of tags and a list of per-tag probabilities; classify: a label and its
        probability. Empty sentences get empty predictions (tag) or are refused (classify).
        nbest=k (a CRF model): (tags, probs, [(tags, score, probability)] the k best
        sequences, best first), from the same forward pass (TagTask.decode_nbest).
        A sentence longer than streaming.THRESHOLD tokens is predicted alone, blockwise when
        the network allows it (tagger/streaming.py; not with nbest).
        """
        examples = list(examples)
        empty, decode = self.labeller.empty_prediction, self.labeller.decode
        if nbest is not None:
            self.check_nbest(nbest)
            empty, decode = self.labeller.empty_nbest, partial(self.labeller.decode_nbest, k=nbest)
        out: list = [None] * len(examples)
        nonempty = [k for k, ex in enumerate(examples) if len(ex.tokens)]
        for k in sorted(set(range(len(examples))) - set(nonempty)):
            out[k] = empty(examples[k])
        if nbest is None:
            for k in [k for k in nonempty if streaming.is_long(examples[k])]:  # blockwise, alone
                out[k] = streaming.predict_long(self, examples[k])
            nonempty = [k for k in nonempty if out[k] is None]
        kept = [examples[k] for k in nonempty]
        for batch in self.batches(kept, batch_size, unit="sentences", with_labels=False) if kept else ():
            scores, _ = self.forward(batch, train=False)
            for pos, pred in zip(batch.index, decode(scores, batch, self.network)):
                out[nonempty[int(pos)]] = pred
        return out

    def check_nbest(self, nbest, option: str = "nbest") -> None:
        """n-best lists come from a CRF's k-best Viterbi: refuse them otherwise."""
        if isinstance(nbest, bool) or not isinstance(nbest, (int, np.integer)) or nbest < 1:
            raise TaggerError(f"{option} must be a positive number of tag sequences, got {nbest!r}")
        if self.crf is None:
            raise TaggerError(f"{option} needs a CRF model (model.crf: true); this model has a softmax output")

    def predict(self, texts: Iterable[str], nbest: int | None = None) -> list[dict]:
        """Raw texts -> one record each: tokens, offsets, tags, probs, spans (tag) or
        text, label, probability (classify). nbest=k (a CRF model): also "nbest", the k
        best tag sequences [{tags, score, probability}], best first."""
        examples = examples_from_texts(list(texts))
        return self.labeller.records(examples, self.predict_examples(examples, nbest=nbest), nbest=nbest)

    def evaluate(self, examples: Sequence[Example], batch_size=256, nbest: int | None = None) -> dict:
        """The task's scores on labelled examples; `score` is what early stopping watches.
        nbest=k (a CRF model): also "oracle", the k-best oracle's (TagTask.score_nbest)."""
        examples = list(examples)
        preds = self.predict_examples(examples, batch_size=batch_size, nbest=nbest)
        if nbest is None:
            return self.labeller.score(examples, preds)
        return self.labeller.score_nbest(examples, preds, nbest)
