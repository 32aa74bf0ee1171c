"""The task, decided once: TagTask (a label per token) and ClassifyTask (a label per text).

Everything that differs between tagging and classification lives here, so no other
module asks which task it is running:

    labels      the label vocabulary, built from the training examples; for tagging in
                the train scheme (`train_scheme`, the one place that computes it), read
                and written in the data scheme (`to_train_scheme` / `to_data_scheme`)
    encode      examples -> label ids: (T,) per sentence, or one id per text
    head        what the network ends with (`head_spec`: sequences out of the last BiLSTM,
                pooling, CRF) and the output layer's loss and decoding (`SoftmaxHead`,
                `CRFHead`)
    predict     per batch -> one (tags, probs) | (label, probability) per row; an empty input
    record      what `tagger predict` writes per example: the example's fields, then the
                prediction's (probabilities rounded to tagger.jsonl.PROB_DECIMALS); its
                jsonl / conll / tsv line, a chunk of records at a time
    score       token accuracy + per-class report + conlleval spans (tag, span schemes);
                accuracy + per-class report (classify)
    n-best      tag with a CRF: the k best tag sequences per sentence (decode_nbest,
                empty_nbest, nbest_records; score_nbest adds the k-best oracle), within
                the train scheme's tag grammar (crf_head, model.crf_constraints;
                docs/crf.md)

Shapes: scores (B, T, K) per token or (B, C) per text; probs the same, as NumPy; best
label ids (B, T) or (B,).  `batch` is a PaddedBatch (ids, lengths, labels, index).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tagger.data.schemes import allowed_transitions, convert, from_spans, spans as tag_spans
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab
from tagger.errors import TaggerError
from tagger.jsonl import (json_prob_lists, json_string_values, json_values, jsonl_close, jsonl_open, rounded_rows,
                          split_rows)
from tagger.layers import CRF
from tagger.metrics import classification_report, conlleval_text, oracle_choice, span_scores, token_accuracy
from tagger.spans import Spans


def train_scheme(data_config) -> str:
    """The tag scheme a model is trained in and predicts in (the data's, unless converted)."""
    return data_config.target_scheme or data_config.scheme


@dataclass(frozen=True)
class HeadSpec:
    """What `build_network` puts after the BiLSTMs."""

    sequences: bool  # the last BiLSTM returns (B, T, 2H), not its final state (B, 2H)
    pooling: str | None  # "max" | "mean": pool the sequences over the real steps -> (B, 2H)
    crf: bool  # a CRF after the Dense scores


def crf_of(network) -> CRF | None:
    """The network's CRF output layer (always the last layer), or None."""
    last = network.layers[-1] if network.layers else None
    return last if isinstance(last, CRF) else None


# ----------------------------------------------------------------------------------------
# output heads: the loss and the decoding of the network's scores


class SoftmaxHead:
    """Softmax cross-entropy over the Dense scores; argmax decoding."""

    def __init__(self, per_token: bool):
        self.per_token = per_token  # tag: only real tokens count in the loss

    def loss(self, scores, batch, network):
        """(loss, d_scores on the backend)."""
        ops = network.ops
        return ops.softmax_xent(scores, ops.asarray(batch.labels), batch.spans.mask() if self.per_token else None)

    def decode(self, scores, batch, network):
        """(best ids, probabilities) as NumPy; per token, 0 and 0 at padded steps (as the CRF's).
        Per token the softmax runs over the real steps only: a batch sorted longest-first is
        often mostly padding (UD EWT test, 256 lines: 80%), and each row's softmax is the
        same alone (rows are independent)."""
        ops = network.ops
        if not self.per_token:
            probs = np.asarray(ops.to_numpy(ops.softmax(scores)))
            return probs.argmax(axis=-1), probs
        mask = batch.spans.mask()
        real = np.asarray(ops.to_numpy(scores))[mask]  # (N, K)
        probs = np.zeros(mask.shape + real.shape[1:], dtype=real.dtype)
        best = np.zeros(mask.shape, dtype=np.int64)
        if len(real):
            probs[mask] = real = np.asarray(ops.to_numpy(ops.softmax(ops.asarray(real))))
            best[mask] = real.argmax(axis=-1)
        return best, probs


class CRFHead:
    """The CRF's negative log-likelihood; Viterbi paths, the per-token marginals as probabilities.

    The CRF runs on the network's backend over the batch's spans (device arrays stay on
    the device); only the paths and the marginals come back to the host. `allowed`: the
    tag grammar (tagger.data.schemes.allowed_transitions) decoding, n-best lists and the
    marginals keep to, or None; `train`: the loss is the constrained model's too."""

    def __init__(self, allowed=None, train=False):
        self.allowed = allowed
        self.train_allowed = allowed if train else None

    def loss(self, scores, batch, network):
        return crf_of(network).loss(scores, network.ops.asarray(batch.labels), batch.spans, self.train_allowed)

    def decode(self, scores, batch, network):
        crf = crf_of(network)
        return crf.decode(scores, batch.spans, self.allowed), crf.marginals(scores, batch.spans, self.allowed)

    def nbest(self, scores, batch, network, k: int):
        """(paths (B, k, T), scores (B, k) with -inf past a row's last path, logZ (B,))."""
        return crf_of(network).nbest(scores, batch.spans, k, self.allowed)


def crf_head(config, labels: LabelVocab):
    """The CRFHead for a tagging config: the grammar of the train scheme over the labels
    (the tags the CRF sees), unless model.crf_constraints is none or the scheme has none."""
    mode, scheme = config.model.crf_constraints, train_scheme(config.data)
    if mode == "none" or scheme == "none":
        return CRFHead()
    return CRFHead(allowed_transitions(labels.labels, scheme), train=mode == "train")


# ----------------------------------------------------------------------------------------
# the tasks


class Task:
    """What TagTask and ClassifyTask share; see the module docstring for the protocol."""

    name = ""
    # how format_records writes each record key in JSON: tagger.jsonl column writers
    # (a key not named here is written by json_values)
    json_columns: dict = {}

    def __init__(self, config, labels: LabelVocab, head):
        self.config = config
        self.labels = labels
        self.head = head

    def loss(self, scores, batch, network):
        return self.head.loss(scores, batch, network)

    def decode(self, scores, batch, network) -> list:
        """One prediction per batch row, rows in batch order."""
        best, probs = self.head.decode(scores, batch, network)
        return self.predictions(best, probs, batch.spans)

    def prediction(self, best, probs, n: int):
        """The prediction of one row, its first n steps real: `predictions` of a batch of one."""
        best = np.asarray(best)[None]
        spans = Spans.from_lengths([n], best.shape[1] if best.ndim == 2 else n)  # a text has no steps
        return self.predictions(best, np.asarray(probs)[None], spans)[0]

    def record(self, ex: Example, pred) -> dict:
        """What `tagger predict` writes for one example: `records` of one."""
        return self.records([ex], [pred])[0]

    def records(self, examples: Sequence[Example], preds: Sequence, nbest: int | None = None) -> list[dict]:
        """What `tagger predict` writes for each (example, prediction): the example's fields
        (example_fields), then the prediction's; with nbest, predict_examples(nbest=...)'s
        predictions and their n-best lists (TagTask.nbest_records)."""
        if nbest is not None:
            return self.nbest_records(examples, preds)
        heads, tails = self.example_fields(examples), self.prediction_fields(examples, preds)
        return [{**head, **tail} for head, tail in zip(heads, tails)]

    def example_fields(self, examples: Sequence[Example], for_json: bool = False) -> list[dict]:
        """The leading record fields, which the example alone decides (text, tokens ...);
        for_json: only for writing them as JSON (values json writes the same may be kept
        as they are, uncopied)."""
        raise NotImplementedError

    def prediction_fields(self, examples: Sequence[Example], preds: Sequence) -> list[dict]:
        """The record fields that follow, from the predictions (probabilities rounded to
        PROB_DECIMALS, all of them in one vectorised pass: a round() each cost more than
        the JSON). A new record key goes here."""
        raise NotImplementedError

    def format_record(self, record: dict, line: int, fmt: str) -> str:
        """One record as `tagger predict --format fmt` writes it: `format_records` of one."""
        return self.format_records([record], [line], fmt)[0]

    def format_records(self, records: Sequence[dict], lines: Sequence[int], fmt: str) -> list[str]:
        """Each record as `tagger predict --format fmt` writes it (lines: their input line
        numbers). jsonl: json.dumps({"line": line, **record}, ensure_ascii=False), byte for
        byte, but NaN as null (tagger.jsonl), written a key at a time for all records."""
        if fmt == "jsonl":
            return jsonl_close(jsonl_open(records, lines, self.json_columns), [{}] * len(records), self.json_columns)
        return [self.format_text(record, line, fmt) for record, line in zip(records, lines)]

    def jsonl_heads(self, examples: Sequence[Example], lines: Sequence[int]) -> list[str]:
        """The start of each example's JSON line, up to its example_fields: made before the
        model runs, while the examples' tokens are still in the CPU's caches (after a
        forward pass, reading them again costs more than writing them)."""
        return jsonl_open(self.example_fields(examples, for_json=True), lines, self.json_columns)

    def jsonl_lines(self, heads: Sequence[str], examples: Sequence[Example], preds: Sequence) -> list[str]:
        """The JSON lines of `format_records(records(examples, preds), lines, "jsonl")`,
        byte for byte, from the jsonl_heads of the same examples and lines."""
        return jsonl_close(heads, self.prediction_fields(examples, preds), self.json_columns)

    def report_lines(self, scores: dict) -> list[str]:
        """The headline of `tagger evaluate` (the per-class table is common)."""
        raise NotImplementedError


class TagTask(Task):
    """A label per token; IOB1/BIO/BIOES tags are converted between the data and train schemes."""

    name = "tag"

    def __init__(self, config, labels: LabelVocab):
        head = crf_head(config, labels) if config.model.crf else SoftmaxHead(per_token=True)
        super().__init__(config, labels, head)
        self.data_scheme = config.data.scheme
        self.train_scheme = train_scheme(config.data)
        # a loss within the grammar needs gold paths within it: re-encoded through their
        # spans (the same spans), so e.g. a loose-BIO I-X after O becomes B-X
        self.canonical = isinstance(self.head, CRFHead) and self.head.train_allowed is not None
        # an entity type unseen in training is scored as a miss ("O"), never a crash
        self.fallback = "O" if "O" in labels else None
        self._label_array = np.array(labels.labels, dtype=object)  # indexed by a (B, T) id matrix

    @classmethod
    def head_spec(cls, mcfg) -> HeadSpec:
        return HeadSpec(sequences=True, pooling=None, crf=mcfg.crf)

    @classmethod
    def build_labels(cls, config, examples: Sequence[Example]) -> LabelVocab:
        """The tags of the training examples in the train scheme; "O" first when present."""
        data, target = config.data.scheme, train_scheme(config.data)
        seen = []
        for ex in examples:
            seen.extend(_convert(ex.labels, data, target))
        return LabelVocab.build(seen, first=["O"] if "O" in seen else [])

    def to_train_scheme(self, tags: Sequence[str]) -> list[str]:
        if self.canonical:
            return from_spans(tag_spans(tags, self.data_scheme), len(tags), self.train_scheme)
        return _convert(tags, self.data_scheme, self.train_scheme)

    def to_data_scheme(self, tags: Sequence[str]) -> list[str]:
        return _convert(tags, self.train_scheme, self.data_scheme)

    def encode(self, examples: Sequence[Example]) -> list[list[int]]:
        out = []
        for ex in examples:
            if ex.labels is None:
                raise TaggerError(f"{ex.source or 'input'}: sentence has no labels")
            out.append(self.labels.encode(self.to_train_scheme(ex.labels), fallback=self.fallback))
        return out

    def gold(self, ex: Example):
        return ex.labels

    def label_counts(self, examples: Sequence[Example]) -> Counter:
        return Counter(t for ex in examples for t in ex.labels)

    def empty_prediction(self, ex: Example):
        return [], []

    def predictions(self, best, probs, spans: Spans) -> list:
        """(tags in the data scheme, the probability of each) per row of best ids (B, T)
        and probabilities (B, T, K) over the rows' real steps (`spans`). Labels and
        probabilities are looked up for the real steps of the whole batch at once."""
        mask = spans.mask()
        best, probs = np.asarray(best)[mask], np.asarray(probs)[mask]  # (N,), (N, K)
        tags = self._label_array[best].tolist()
        chosen = probs[np.arange(len(best)), best].tolist()
        lengths = spans.lengths.tolist()
        rows = zip(split_rows(tags, lengths), split_rows(chosen, lengths))
        if self.train_scheme in ("none", self.data_scheme):  # else _convert copies the tags
            return list(rows)
        return [(self.to_data_scheme(t), p) for t, p in rows]

    def example_fields(self, examples: Sequence[Example], for_json: bool = False) -> list[dict]:
        """text, tokens and offsets as [start, end] lists (for_json: the example's own
        (start, end) pairs, which json writes as lists too)."""
        def offsets(ex):
            return ex.offsets if for_json or ex.offsets is None else list(map(list, ex.offsets))

        return [{"text": ex.text, "tokens": ex.tokens, "offsets": offsets(ex)} for ex in examples]

    def prediction_fields(self, examples: Sequence[Example], preds: Sequence) -> list[dict]:
        """tags, probs, and the spans of span schemes (see Task.prediction_fields)."""
        probs = rounded_rows([pred[1] for pred in preds])
        out = [{"tags": pred[0], "probs": p} for pred, p in zip(preds, probs)]
        if self.data_scheme != "none":
            for fields, ex in zip(out, examples):
                if ex.offsets is not None:
                    fields["spans"] = self._spans(ex, fields["tags"])
        return out

    def _spans(self, ex: Example, tags: list[str]) -> list[dict]:
        """The entity spans of the tags: type, character start and end, text, token range."""
        return [
            {
                "type": kind,
                "start": ex.offsets[a][0],
                "end": ex.offsets[b - 1][1],
                "text": ex.text[ex.offsets[a][0] : ex.offsets[b - 1][1]],
                "token_start": a,
                "token_end": b,
            }
            for kind, a, b in tag_spans(tags, self.data_scheme)
        ]

    json_columns = {"text": json_string_values, "tokens": json_values, "offsets": json_values, "tags": json_values,
                    "probs": json_prob_lists}

    # -- n-best lists (a CRF head only: Model.predict_examples(nbest=k)) ----------------
    def decode_nbest(self, scores, batch, network, k: int) -> list:
        """Per batch row: (tags, probs) as `decode`, plus the k best tag sequences as
        [(tags in the data scheme, score, probability = exp(score - logZ))], best first
        (fewer when the sentence has fewer paths within the grammar)."""
        paths, totals, logZ = self.head.nbest(scores, batch, network, k)
        out = []
        for row, (tags, probs) in enumerate(self.decode(scores, batch, network)):
            st, n = int(batch.spans.starts[row]), int(batch.lengths[row])
            cands = [
                (self.to_data_scheme(self.labels.decode(paths[row, m, st : st + n])), float(total),
                 min(1.0, float(np.exp(total - logZ[row]))))  # float32 rounding can pass 1 by an ulp
                for m, total in enumerate(totals[row]) if np.isfinite(total)
            ]
            out.append((tags, probs, cands))
        return out

    def empty_nbest(self, ex: Example):
        """An empty sentence has one path, the empty one (score 0, probability 1)."""
        return [], [], [([], 0.0, 1.0)]

    def nbest_records(self, examples: Sequence[Example], preds: Sequence) -> list[dict]:
        """`records` of the 1-best (decode_nbest's first two fields), each plus "nbest":
        [{tags, score, probability}, ...] best first."""
        records = self.records(examples, [pred[:2] for pred in preds])  # the 1-best fields
        for record, pred in zip(records, preds):
            record["nbest"] = [{"tags": tags, "score": score, "probability": prob} for tags, score, prob in pred[2]]
        return records

    def score_nbest(self, examples: Sequence[Example], preds: Sequence, k: int) -> dict:
        """`score` of the 1-best, plus "oracle": the scores of the n-best oracle (per
        sentence the candidate closest to the gold, tagger.metrics.oracle_choice)."""
        out = self.score(examples, [p[:2] for p in preds])
        gold = [ex.labels for ex in examples]
        best = oracle_choice(gold, [[c[0] for c in p[2]] for p in preds], self.data_scheme)
        if self.data_scheme != "none":
            oracle = span_scores(gold, best, scheme=self.data_scheme)
            out["oracle"] = {"k": k, "metric": "span_f1", "score": oracle["f1"], "spans": oracle}
        else:
            out["oracle"] = {"k": k, "metric": "accuracy", "score": token_accuracy(gold, best)["accuracy"]}
        return out

    def format_text(self, record: dict, line: int, fmt: str) -> str:
        if fmt == "conll":
            return "".join(f"{t}\t{g}\n" for t, g in zip(record["tokens"], record["tags"])) + "\n"
        return f"{line}\t{' '.join(record['tokens'])}\t{' '.join(record['tags'])}\n"

    def score(self, examples: Sequence[Example], preds: Sequence) -> dict:
        """Token accuracy, the per-tag report, and conlleval spans for span schemes.

        `score` is what early stopping watches: span F1 for span schemes, else accuracy.
        """
        gold = [ex.labels for ex in examples]
        guess = [p[0] for p in preds]
        acc = token_accuracy(gold, guess)
        out = {"task": self.name, "n_sentences": len(gold), "accuracy": acc["accuracy"], "token_accuracy": acc}
        out["report"] = classification_report([t for s in gold for t in s], [t for s in guess for t in s])
        if self.data_scheme != "none":
            out["spans"] = span_scores(gold, guess, scheme=self.data_scheme)
            out["score"] = out["spans"]["f1"]
        else:
            out["score"] = out["accuracy"]
        return out

    def report_lines(self, scores: dict) -> list[str]:
        lines = [f"token accuracy: {scores['accuracy'] * 100:.2f}% ({scores['n_sentences']} sentences)"]
        if "spans" in scores:
            lines.append(conlleval_text(scores["spans"]))
        if "oracle" in scores:
            o = scores["oracle"]
            what = "span F1" if o["metric"] == "span_f1" else "token accuracy"
            lines.append(f"{o['k']}-best oracle {what}: {o['score'] * 100:.2f}%")
        return lines


class ClassifyTask(Task):
    """A label per text, from the last BiLSTM's final states or its pooled sequence."""

    name = "classify"

    def __init__(self, config, labels: LabelVocab):
        super().__init__(config, labels, SoftmaxHead(per_token=False))

    @classmethod
    def head_spec(cls, mcfg) -> HeadSpec:
        pooled = mcfg.pooling != "last"
        return HeadSpec(sequences=pooled, pooling=mcfg.pooling if pooled else None, crf=False)

    @classmethod
    def build_labels(cls, config, examples: Sequence[Example]) -> LabelVocab:
        return LabelVocab.build(ex.label for ex in examples)

    def encode(self, examples: Sequence[Example]) -> list[int]:
        out = []
        for ex in examples:
            if ex.label is None:
                raise TaggerError(f"{ex.source or 'input'}: text has no label")
            out.append(self.labels.encode_one(ex.label))
        return out

    def gold(self, ex: Example):
        return ex.label

    def label_counts(self, examples: Sequence[Example]) -> Counter:
        return Counter(ex.label for ex in examples)

    def empty_prediction(self, ex: Example):
        raise TaggerError(f"{ex.source or 'input'}: empty text cannot be classified")

    def predictions(self, best, probs, spans: Spans) -> list:
        """(label, its probability) per row of best ids (B,) and probabilities (B, C)."""
        best = np.asarray(best)
        chosen = np.asarray(probs)[np.arange(len(best)), best].tolist()
        labels = self.labels.labels
        return [(labels[i], p) for i, p in zip(best.tolist(), chosen)]

    def example_fields(self, examples: Sequence[Example], for_json: bool = False) -> list[dict]:
        return [{"text": ex.text} for ex in examples]

    def prediction_fields(self, examples: Sequence[Example], preds: Sequence) -> list[dict]:
        """label and probability (see Task.prediction_fields)."""
        (probs,) = rounded_rows([[pred[1] for pred in preds]])
        return [{"label": pred[0], "probability": p} for pred, p in zip(preds, probs)]

    json_columns = {"text": json_string_values, "label": json_string_values, "probability": json_values}

    def format_text(self, record: dict, line: int, fmt: str) -> str:
        # conll and tsv are the same for texts: one row per line
        return f"{line}\t{record['label']}\t{record['probability']}\t{tsv_field(record['text'])}\n"

    def score(self, examples: Sequence[Example], preds: Sequence) -> dict:
        report = classification_report([ex.label for ex in examples], [p[0] for p in preds])
        return {"task": self.name, "n": len(examples), "accuracy": report["accuracy"], "score": report["accuracy"], "report": report}

    def report_lines(self, scores: dict) -> list[str]:
        return [f"accuracy: {scores['accuracy'] * 100:.2f}% ({scores['n']} texts)"]


TASKS: dict[str, type[Task]] = {"tag": TagTask, "classify": ClassifyTask}


def task_class(name: str) -> type[Task]:
    """The class for `model.task` (the config's schema admits only these names)."""
    return TASKS[name]


def make_task(config, labels: LabelVocab) -> Task:
    """The task object for a resolved config and its label vocabulary."""
    return task_class(config.model.task)(config, labels)


def build_labels(config, examples: Sequence[Example]) -> LabelVocab:
    """The label vocabulary of the training examples (tags in the train scheme, or classes)."""
    return task_class(config.model.task).build_labels(config, examples)


def head_spec(mcfg) -> HeadSpec:
    return task_class(mcfg.task).head_spec(mcfg)


def _convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    if source == target or source == "none":
        return list(tags)
    return convert(tags, source, target)


def tsv_field(text: str) -> str:
    """A text as one TSV field: backslash, tab, CR and LF escaped as \\\\, \\t, \\r, \\n."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")
