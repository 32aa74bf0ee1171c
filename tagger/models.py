"""The network and the task, built from a config; no I/O.

    tag:       ids (B, T) -> Embedding -> Dropout -> [BiLSTM, return_sequences] x L
               -> Dropout -> Dense(K)                       -> scores (B, T, K)
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

import numpy as np

from tagger.data.batching import PaddedBatch, make_batches
from tagger.data.prepare import examples_from_texts
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.layers import (CRF, LSTM, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential)
from tagger.tasks import Task, crf_of, head_spec, make_task

POOLING_LAYERS = {"max": GlobalMaxPooling1D, "mean": GlobalAveragePooling1D}


# ----------------------------------------------------------------------------------------
# sizes: checked against free memory before anything is allocated
def parameter_count(mcfg, n_words: int, n_labels: int) -> int:
    """Weights of the network `mcfg` describes, without building it."""
    e, h = mcfg.embedding_dim, mcfg.lstm_units
    width = 2 * h if mcfg.merge_mode == "concat" else h  # what each BiLSTM passes on

    def bilstm(inputs):
        return 2 * (inputs * 4 * h + h * 4 * h + 4 * h)

    count = n_words * e + bilstm(e) + (mcfg.layers - 1) * bilstm(width)
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


def check_network_fits(mcfg, n_words: int, n_labels: int, dtype=np.float32, copies: int = COPIES_IN_TRAINING, source="model"):
    """Refuse, before allocating anything, a network whose weights cannot fit in memory."""
    n = parameter_count(mcfg, n_words, n_labels)
    need = n * np.dtype(dtype).itemsize * copies
    have = available_memory()
    if need > have:
        raise TaggerError(
            f"{source}: model.lstm_units {mcfg.lstm_units}, model.embedding_dim {mcfg.embedding_dim}, "
            f"model.layers {mcfg.layers} with {n_words} words make {n:,} weights ({need / 2**30:,.1f} GiB "
            f"with gradients and optimizer state), more than the {have / 2**30:,.1f} GiB of free memory; make them smaller"
        )
    return n


def build_network(mcfg, n_words, n_labels, ops="cpu", dtype=np.float32, seed=0, embeddings=None) -> Sequential:
    """The Sequential for `mcfg` (a ModelConfig); layer names are fixed so weight files match."""
    check_network_fits(mcfg, n_words, n_labels, dtype, copies=1)  # refuse before allocating
    head = head_spec(mcfg)
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

    def __init__(self, config, words: WordVocab, labels: LabelVocab, network: Sequential):
        self.config = config
        self.words = words
        self.network = network
        self.labeller: Task = make_task(config, labels)

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

    def batches(self, examples, batch_size, unit="sentences", shuffle=False, seed=0, with_labels=True):
        ids, labels = self.encode(examples, with_labels)
        return make_batches(ids, labels, batch_size=batch_size, unit=unit, shuffle=shuffle, seed=seed)

    # -- running ----------------------------------------------------------------------
    def forward(self, batch: PaddedBatch, train: bool):
        """(scores (B, T, K) or (B, C) on the backend, backprop): every network call goes here.
        The host ids and the batch's spans go in as they are (the Embedding moves the ids)."""
        return self.network.forward(batch.ids, batch.spans, train=train)

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

    def predict_examples(self, examples: Sequence[Example], batch_size=256):
        """Per example, in input order: (labels in the data's scheme, probabilities).

        tag: a list of tags and a list of per-tag probabilities; classify: a label and its
        probability. Empty sentences get empty predictions (tag) or are refused (classify).
        """
        examples = list(examples)
        out: list = [None] * len(examples)
        nonempty = [k for k, ex in enumerate(examples) if len(ex.tokens)]
        for k in sorted(set(range(len(examples))) - set(nonempty)):
            out[k] = self.labeller.empty_prediction(examples[k])
        kept = [examples[k] for k in nonempty]
        for batch in self.batches(kept, batch_size, unit="sentences", with_labels=False):
            scores, _ = self.forward(batch, train=False)
            for pos, pred in zip(batch.index, self.labeller.decode(scores, batch, self.network)):
                out[nonempty[int(pos)]] = pred
        return out

    def predict(self, texts: Iterable[str]) -> list[dict]:
        """Raw texts -> one record each: tokens, offsets, tags, probs, spans (tag) or
        text, label, probability (classify)."""
        examples = examples_from_texts(list(texts))
        return self.labeller.records(examples, self.predict_examples(examples))

    def evaluate(self, examples: Sequence[Example], batch_size=256) -> dict:
        """The task's scores on labelled examples; `score` is what early stopping watches."""
        examples = list(examples)
        return self.labeller.score(examples, self.predict_examples(examples, batch_size=batch_size))
