"""The training loop's stopping and evaluation rules (with a scripted model), the batches
it is handed, and a short real `train` run into an output folder."""
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from tagger.config import load_config
from tagger.errors import TaggerError
from tagger.optim import SGD
from tagger.training import Stop, epoch_batches, replace_singletons, train, train_loop

from .cli.conftest import REPO


@dataclass
class FakeBatch:
    n_tokens: int


class ScriptedModel:
    """train_step returns the next scripted loss; no weights (the optimizer has nothing to do)."""

    def __init__(self, losses):
        self.losses = iter(losses)
        self.network = []
        self.trained = []

    def train_step(self, batch):
        self.trained.append(batch)
        return next(self.losses)


def batches(per_epoch, epochs):
    return [(e, FakeBatch(10 * e + k)) for e in range(1, epochs + 1) for k in range(per_epoch)]


def scripted(scores):
    it = iter(scores)
    return lambda: {"score": next(it)}


def run(model, items, evaluate, stop, **kw):
    return list(train_loop(model, items, evaluate, SGD(lr=0.1), stop, **kw))


def evals(steps):
    return [s.step for s in steps if s.evaluated]


def test_every_step_is_yielded_with_its_loss_tokens_and_epoch():
    model = ScriptedModel([float(k) for k in range(1, 7)])
    steps = run(model, batches(3, 2), scripted([0.1, 0.2]), Stop(epochs=2))
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [s.epoch for s in steps] == [1, 1, 1, 2, 2, 2]
    assert [s.loss for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [s.n_tokens for s in steps] == [10, 11, 12, 20, 21, 22]
    assert evals(steps) == [3, 6]  # eval_every "epoch": at each epoch's last batch
    assert [s.mean_loss for s in steps if s.evaluated] == [2.0, 5.0]  # since the previous evaluation
    assert [s.is_best for s in steps] == [False, False, True, False, False, True]
    assert [s.last for s in steps] == [False] * 5 + [True]


def test_max_steps_stops_and_evaluates_at_the_last_step():
    model = ScriptedModel([1.0] * 100)
    steps = run(model, batches(10, 5), scripted([0.1, 0.2, 0.3]), Stop(epochs=5, max_steps=7), eval_every=3)
    assert evals(steps) == [3, 6, 7] and steps[-1].step == 7 and steps[-1].last
    assert len(model.trained) == 7


def test_the_epoch_limit_stops_even_an_endless_batch_stream():
    def endless():
        epoch = 0
        while True:
            epoch += 1
            for k in range(2):
                yield epoch, FakeBatch(k)

    model = ScriptedModel([1.0] * 100)
    steps = run(model, endless(), scripted([0.1] * 10), Stop(epochs=3))
    assert [s.epoch for s in steps] == [1, 1, 2, 2, 3, 3] and steps[-1].last and evals(steps) == [2, 4, 6]


def test_the_last_step_is_evaluated_when_the_data_ends_between_evaluations():
    model = ScriptedModel([1.0] * 100)
    steps = run(model, batches(4, 2), scripted([0.1, 0.2, 0.3]), Stop(epochs=2), eval_every=3)
    assert evals(steps) == [3, 6, 8]


def test_patience_stops_after_that_many_evaluations_without_a_better_score():
    model = ScriptedModel([1.0] * 100)
    steps = run(model, batches(1, 10), scripted([0.5, 0.6, 0.6, 0.55, 0.9]), Stop(epochs=10, patience=2))
    assert evals(steps) == [1, 2, 3, 4]  # 0.6 (equal) and 0.55: two without improvement
    assert [s.is_best for s in steps] == [True, True, False, False] and steps[-1].last
    unlimited = run(ScriptedModel([1.0] * 100), batches(1, 5), scripted([0.5] * 5), Stop(epochs=5, patience=None))
    assert len(unlimited) == 5


def test_without_dev_data_the_score_is_minus_the_mean_training_loss():
    model = ScriptedModel([4.0, 2.0, 3.0, 1.0])
    steps = run(model, batches(2, 2), None, Stop(epochs=2))
    assert [s.scores for s in steps if s.evaluated] == [{"score": -3.0}, {"score": -2.0}]
    assert [s.is_best for s in steps if s.evaluated] == [True, True]


def test_the_schedule_sees_every_score_and_the_step_reports_the_lr_after_it():
    class Halve:
        def __init__(self, optimizer):
            self.optimizer, self.seen = optimizer, []

        def observe(self, score):
            self.seen.append(score)
            self.optimizer.lr /= 2

    optimizer = SGD(lr=0.8)
    schedule = Halve(optimizer)
    steps = list(train_loop(ScriptedModel([1.0] * 4), batches(2, 2), scripted([0.3, 0.4]), optimizer, Stop(epochs=2),
                            schedule=schedule))
    assert schedule.seen == [0.3, 0.4]
    assert [s.lr for s in steps] == [0.8, 0.4, 0.4, 0.2]


def test_a_diverging_loss_stops_with_a_clear_error():
    with pytest.raises(TaggerError, match="training diverged at step 2"):
        run(ScriptedModel([1.0, math.nan]), batches(3, 1), None, Stop(epochs=1))


# ----------------------------------------------------------------------------------------
# the batches the caller builds


def test_singleton_words_are_replaced_by_their_unknown_entry_at_the_given_rate():
    from tagger.data.batching import make_batches

    rng = np.random.default_rng(0)
    ids = [list(rng.integers(2, 50, size=30)) for _ in range(40)]
    batch = make_batches(ids, batch_size=40)[0]
    replacements = np.full(50, -1)
    replacements[2:6] = 1  # plain [UNK]
    replacements[6:10] = 60  # an unknown-word class entry
    out = replace_singletons(batch, replacements, 0.5, np.random.default_rng(1))
    was = replacements[batch.ids] >= 0
    assert (out.ids[~was] == batch.ids[~was]).all()  # other words and padding untouched
    changed = out.ids[was] != batch.ids[was]
    assert 0.4 < changed.mean() < 0.6
    assert (out.ids[was][changed] == replacements[batch.ids[was][changed]]).all()
    assert (out.lengths == batch.lengths).all() and out.labels is batch.labels


@pytest.fixture(scope="module")
def quick():
    return load_config(REPO / "configs" / "sample_pos.yaml", overrides=["training.epochs=2", "training.batch_size=64"])


def _model(cfg):
    from tagger.data.prepare import build_vocabularies, load_splits
    from tagger.models import Model, build_network

    splits = load_splits(cfg)
    words, labels = build_vocabularies(cfg, splits.train)
    return Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), seed=0)), splits


def test_epoch_batches_are_shuffled_per_epoch_and_replace_singletons_only_when_asked(quick):
    model, splits = _model(quick)
    plain = list(epoch_batches(model, splits.train, quick.training))
    per_epoch = len(model.batches(splits.train, 64))
    assert [e for e, _ in plain] == [1] * per_epoch + [2] * per_epoch
    first = [b.index.tolist() for e, b in plain if e == 1]
    again = [b.index.tolist() for e, b in epoch_batches(model, splits.train, quick.training) if e == 1]
    assert first == again and first != [b.index.tolist() for e, b in plain if e == 2]
    unk = quick.model_copy(update={"training": quick.training.model_copy(update={"unk_replace": 0.9})})
    replaced = list(epoch_batches(model, splits.train, unk.training))
    unknown = list(model.words.unknown_ids)
    n_unk = lambda items: sum(int(np.isin(b.ids, unknown).sum()) for _, b in items)  # noqa: E731
    assert n_unk(replaced) > n_unk(plain)


def test_train_writes_logs_and_both_checkpoints_and_evaluates_the_last_step(quick, tmp_path):
    cfg = load_config(REPO / "configs" / "sample_pos.yaml", overrides=["training.max_steps=5", "training.eval_every=2"])
    final = train(cfg, tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4, 5]
    # the rate of the updates alone leaves the evaluation out of the same window
    assert all(0 < r["eval_s"] < r["elapsed_s"] and r["train_tokens_per_s"] > r["tokens_per_s"] > 0 for r in logs)
    rows = (tmp_path / "loss.tsv").read_text().splitlines()
    assert rows[0].startswith("epoch\tstep\tloss") and [r.split("\t")[1] for r in rows[1:]] == ["2", "4", "5"]
    best = json.loads((tmp_path / "model-best" / "metrics.json").read_text())
    assert best["dev"]["score"] == pytest.approx(max(r["dev_score"] for r in logs)) == pytest.approx(final["dev"]["score"])
    last = json.loads((tmp_path / "model-last" / "metrics.json").read_text())
    assert last["step"] == 5 and not final["interrupted"]


def test_ctrl_c_saves_the_current_weights_and_keeps_the_optimizer_state_reachable(tmp_path, monkeypatch):
    from tagger import training
    from tagger.io import load_model
    from tagger.models import Model

    calls = {"n": 0}
    real_step = Model.train_step

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Model, "train_step", interrupted)
    run = training.setup(load_config(REPO / "configs" / "sample_pos.yaml"), tmp_path)
    with pytest.raises(KeyboardInterrupt):  # the run stops: the CLI turns it into exit 130
        training.execute(run, progress=False)
    assert run.interrupted and int(run.optimizer.get_state()["step"]) == 3
    saved = load_model(tmp_path / "model-last")
    for (name, a), (_, b) in zip(run.model.network.named_weights(), saved.network.named_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (tmp_path / "model-best").is_dir()
    assert training.finalize(run)["interrupted"]


@pytest.mark.parametrize("unit", ["sentences", "tokens"])
def test_an_mpi_rank_pads_only_its_share_of_each_batch(quick, unit):
    """epoch_batches(share=(r, R)) gives rank r exactly share_batch(whole batch, r, R): the
    same rows, ids after the singleton replacement, labels and characters, with the whole
    batch's counts; and the ranks' shares cover each batch once."""
    from tagger.data.prepare import build_char_vocab, build_vocabularies, load_splits
    from tagger.distributed import BatchShare, loss_count, share_batch
    from tagger.models import Model, build_network

    cfg = quick.model_copy(update={"training": quick.training.model_copy(
        update={"unk_replace": 0.5, "batch_unit": unit, "batch_size": 64 if unit == "sentences" else 600})})
    cfg = load_config(REPO / "configs" / "sample_pos.yaml", overrides=["model.chars.encoder=lstm"]).model_copy(
        update={"training": cfg.training})
    splits = load_splits(cfg)
    words, labels = build_vocabularies(cfg, splits.train)
    chars = build_char_vocab(cfg, splits.train)
    model = Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), seed=0, n_chars=len(chars)),
                  chars=chars)
    whole = list(epoch_batches(model, splits.train, cfg.training))
    shares = [list(epoch_batches(model, splits.train, cfg.training, share=(r, 3))) for r in range(3)]
    assert all(len(s) == len(whole) for s in shares)
    for k, (epoch, batch) in enumerate(whole):
        got = [s[k] for s in shares]
        assert all(e == epoch and isinstance(b, BatchShare) for e, b in got)
        for r, (_, b) in enumerate(got):
            want = share_batch(batch, r, 3)
            for name in ("ids", "lengths", "labels", "index", "chars", "char_lengths"):
                assert np.array_equal(getattr(b.mine, name), getattr(want, name)), (k, r, name)
            assert (b.n_tokens, b.loss_count) == (batch.n_tokens, loss_count(batch))
        assert sorted(i for _, b in got for i in b.mine.index.tolist()) == sorted(batch.index.tolist())
    assert any(b.size > 1 for _, b in whole)
