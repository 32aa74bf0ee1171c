"""Pre-tokenizer offsets, WordVocab (tokenizers WordLevel) and LabelVocab."""

from __future__ import annotations

import pytest

from tagger.data.vocab import PAD_ID, UNK_ID, LabelVocab, WordVocab, pretokenize, split_words, unknown_class
from tagger.errors import DataError

SENTS = [["The", "cat", "sat", "."], ["the", "dog", "sat", "."], ["A", "cat", "!"]]


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("Hello, world.", ["Hello", ",", "world", "."]),
        ("I don't know U.S. prices: $3.50...", ["I", "do", "n't", "know", "U.S.", "prices", ":", "$", "3.50", "..."]),
        ("It's an e-mail (café, naïve)!", ["It", "'s", "an", "e-mail", "(", "café", ",", "naïve", ")", "!"]),
        ("it 's a charming  journey . ", ["it", "'s", "a", "charming", "journey", "."]),
    ],
)
def test_pretokenize_tokens_and_offsets_map_back(text, tokens):
    pieces = pretokenize(text)
    assert [tok for tok, _ in pieces] == tokens == split_words(text)
    assert all(text[s:e] == tok for tok, (s, e) in pieces)


def test_special_ids_and_frequency_order():
    v = WordVocab.build(SENTS)
    assert v.word_to_id("[PAD]") == PAD_ID == 0 and v.word_to_id("[UNK]") == UNK_ID == 1
    assert v.words()[:4] == ["[PAD]", "[UNK]", "cat", "sat"]  # count 2 each, first seen first
    assert v.size == 2 + 8
    assert v.encode_words(["cat", "zebra"]) == [v.word_to_id("cat"), UNK_ID]


def test_min_freq_max_size_and_lowercase():
    v = WordVocab.build(SENTS, min_freq=2)
    assert v.words() == ["[PAD]", "[UNK]", "cat", "sat", "."]
    assert len(WordVocab.build(SENTS, max_size=3)) == 5
    low = WordVocab.build(SENTS, lowercase=True, min_freq=2)
    assert low.words() == ["[PAD]", "[UNK]", "the", "cat", "sat", "."]
    assert low.lowercase and low.encode_words(["THE", "Cat"]) == [2, 3]


def test_one_id_per_word_even_for_odd_words():
    v = WordVocab.build([["U.S.", "e-mail", "a b", "don't"]])
    words = ["U.S.", "e-mail", "a b", "don't", "", "x,y"]
    ids = v.encode_words(words)
    assert len(ids) == len(words)
    assert ids[:4] == [2, 3, 4, 5] and ids[4:] == [UNK_ID, UNK_ID]
    assert v.encode_batch([["U.S."], ["e-mail", "zz"]]) == [[2], [3, UNK_ID]]


def test_encode_text_returns_ids_tokens_offsets():
    v = WordVocab.build([["hello", ",", "world"]], lowercase=True)
    ids, tokens, offsets = v.encode_text("Hello, World!")
    assert tokens == ["Hello", ",", "World", "!"]
    assert ids == [v.word_to_id("hello"), v.word_to_id(","), v.word_to_id("world"), UNK_ID]
    assert [("Hello, World!")[s:e] for s, e in offsets] == tokens


def test_save_load_identical_ids(tmp_path):
    v = WordVocab.build(SENTS, lowercase=True)
    path = tmp_path / "tokenizer.json"
    v.save(path)
    w = WordVocab.load(path)
    probe = [["The", "cat", "UNSEEN", "!"], ["a", "Dog"]]
    assert w.encode_batch(probe) == v.encode_batch(probe)
    assert w.words() == v.words() and w.lowercase
    assert w.encode_text("The cat!") == v.encode_text("The cat!")


def test_damaged_tokenizer_file_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": {', encoding="utf-8")
    with pytest.raises(DataError) as err:
        WordVocab.load(path)
    assert str(err.value).startswith(f"{path}: damaged tokenizer file (") and "\n" not in str(err.value)
    with pytest.raises(DataError, match="tokenizer file not found"):
        WordVocab.load(tmp_path / "missing.json")


def test_label_vocab_round_trip_and_unknown(tmp_path):
    labels = LabelVocab.build(["B-PER", "O", "I-PER", "O"], first=["O"])
    assert labels.labels == ["O", "B-PER", "I-PER"]
    assert labels.encode(["O", "I-PER"]) == [0, 2]
    assert labels.decode([2, 1]) == ["I-PER", "B-PER"]
    path = tmp_path / "labels.json"
    labels.save(path)
    assert LabelVocab.load(path).labels == labels.labels
    with pytest.raises(DataError, match=r"label 'B-LOC' was not seen in training \(known: O, B-PER, I-PER\)"):
        labels.encode(["O", "B-LOC"])
    assert labels.encode(["B-LOC"], fallback="O") == [0]
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="damaged label file"):
        LabelVocab.load(path)


def test_unknown_word_classes_are_shape_and_suffix():
    from tagger.data.vocab import unknown_class

    cases = {
        "Smith": "[UNK-Cap]", "Germans": "[UNK-Cap-s]", "NATO": "[UNK-ALLCAPS]", "running": "[UNK-lower-ing]",
        "quickly": "[UNK-lower-ly]", "3.50": "[UNK-NUM]", "1990s": "[UNK-ALNUM]", "eBay": "[UNK-mIxed]",
        "well-known": "[UNK-lower-hyph]", "--": "[UNK-SYM]", "as": "[UNK-lower]", "": "[UNK]",
    }
    assert {w: unknown_class(w) for w in cases} == cases


def test_unknown_words_map_to_their_class_and_classes_follow_the_words(tmp_path):
    plain = WordVocab.build([["The", "cat", "sat", "."], ["Dogs", "ran", "3"]])
    v = WordVocab.build([["The", "cat", "sat", "."], ["Dogs", "ran", "3"]], unknown_classes=True)
    assert v.words()[: len(plain)] == plain.words()  # word ids do not move
    assert v.words()[len(plain):] == ["[UNK-Cap]", "[UNK-lower]", "[UNK-SYM]", "[UNK-Cap-s]", "[UNK-NUM]"]
    ids = v.encode_words(["Zebra", "Birds", "42", "cat", "walk", "zebras"])
    assert v.words()[ids[0]] == "[UNK-Cap]" and v.words()[ids[1]] == "[UNK-Cap-s]" and v.words()[ids[2]] == "[UNK-NUM]"
    assert ids[3] == v.word_to_id("cat")
    assert ids[4] == v.word_to_id("walk") == v.words().index("[UNK-lower]")
    assert ids[5] == UNK_ID  # class [UNK-lower-s] never seen in training: plain [UNK]
    assert v.unknown_ids == {UNK_ID} | set(range(len(plain), len(v)))
    v.save(tmp_path / "tokenizer.json")
    again = WordVocab.load(tmp_path / "tokenizer.json")
    assert again.unknown_classes and again.encode_words(["Zebra", "Birds", "42", "cat", "walk", "zebras"]) == ids


def test_unknown_classes_see_case_even_when_the_vocabulary_lowercases():
    v = WordVocab.build([["The", "cat"], ["Paris", "is", "nice"]], lowercase=True, unknown_classes=True)
    ids = v.encode_words(["London", "town"])
    assert v.words()[ids[0]] == "[UNK-Cap]" and v.words()[ids[1]] == "[UNK-lower]"


def test_unknown_class_cache_gives_the_same_ids_and_stays_bounded(monkeypatch):
    vocab = WordVocab.build([["the", "cat", "sat"]], min_freq=1, unknown_classes=True)
    words = ["Paris", "NATO", "3.50", "running", "eBay", "Paris", "x-ray"]
    expected = [vocab._vocab.get(unknown_class(w), 1) for w in words]
    assert [vocab.unknown_id(w) for w in words] == expected  # cold
    assert [vocab.unknown_id(w) for w in words] == expected  # cached
    monkeypatch.setattr(WordVocab, "UNKNOWN_CACHE_SIZE", 3)
    for k in range(50):
        vocab.unknown_id(f"Word{k}")
        assert len(vocab._unknown_cache) <= 3
    assert vocab.encode_batch([words]) == [expected]
