"""The character vocabulary (tagger/data/chars.py): ids, unknown characters, the max_chars
cap, padded matrices, save/load and one-line errors for damaged files."""
import json

import numpy as np
import pytest

from tagger.data.chars import PAD_ID, UNK_ID, CharVocab, clip
from tagger.errors import DataError, TaggerError

WORDS = ["the", "cat", "sat", "on", "the", "mat", "Zoë"]


def test_ids_by_frequency_with_padding_and_unknown_first():
    v = CharVocab.build(WORDS)
    assert v.chars[:2] == ["[PAD]", "[UNK]"] and PAD_ID == 0 and UNK_ID == 1
    # t: 5, a: 3, then e, h (2 each, first-appearance order)
    assert v.chars[2:6] == ["t", "a", "h", "e"]
    assert v.encode("hat") == [v.char_to_id("h"), v.char_to_id("a"), v.char_to_id("t")]
    assert v.encode("q!") == [UNK_ID, UNK_ID]
    assert len(v) == v.size == 2 + len(set("".join(WORDS)))


def test_min_freq_and_max_size_cut_rare_characters():
    v = CharVocab.build(WORDS, min_freq=2)
    assert set(v.chars[2:]) == {"t", "a", "h", "e", "o"}
    assert v.encode("m") == [UNK_ID]
    assert CharVocab.build(WORDS, max_size=1).chars == ["[PAD]", "[UNK]", "t"]
    with pytest.raises(TaggerError, match="min_freq must be an int >= 1"):
        CharVocab.build(WORDS, min_freq=0)


def test_nfc_normalisation_makes_one_character_of_a_combining_accent():
    v = CharVocab.build(["Zoë"])
    decomposed = "Zoe\u0308"
    assert v.encode(decomposed) == v.encode("Zoë") and UNK_ID not in v.encode(decomposed)


def test_encode_batch_pads_with_zero_and_counts_lengths():
    v = CharVocab.build(WORDS)
    ids, lengths = v.encode_batch(["cat", "", "on"])
    assert ids.shape == (3, 3) and ids.dtype == np.int32
    np.testing.assert_array_equal(lengths, [3, 0, 2])
    assert (ids[1] == 0).all() and ids[2, 2] == 0 and (ids[0] > 1).all()
    empty, n = v.encode_batch([])
    assert empty.shape == (0, 1) and n.shape == (0,)


def test_max_chars_keeps_the_prefix_and_the_suffix():
    assert clip("internationalisation", 8) == "inte" + "tion"
    assert clip("abcdefg", 3) == "ab" + "g"
    assert clip("abc", 1) == "a"
    assert clip("short", 8) == "short"
    v = CharVocab.build(["internationalisation"], max_chars=8)
    ids, lengths = v.encode_batch(["internationalisation", "in"])
    assert ids.shape == (2, 8) and list(lengths) == [8, 2]
    assert v.encode("internationalisation")[-4:] == v.encode("tion")
    with pytest.raises(TaggerError, match="max_chars must be null"):
        CharVocab([], max_chars=0)


def test_encode_sentences_gives_batch_word_char_ids():
    v = CharVocab.build(WORDS)
    ids, lengths = v.encode_sentences([["the", "cat"], ["on"]], words=3)
    assert ids.shape == (2, 3, 3)
    np.testing.assert_array_equal(lengths, [[3, 3, 0], [2, 0, 0]])
    np.testing.assert_array_equal(ids[1, 0, :2], v.encode("on"))
    with pytest.raises(TaggerError, match="sentence 0 has 2 words, more than the 1"):
        v.encode_sentences([["the", "cat"]], words=1)


def test_encode_each_is_encode_batch_per_sentence():
    """The one-pass encoding of many sentences (Model.encode_chars) gives every sentence the
    matrix encode_batch gives it: its own width, empty sentences and empty words included."""
    for max_chars in (None, 3):
        v = CharVocab.build(WORDS, max_chars=max_chars)
        sentences = [["the", "cat"], [], ["internationalisation", "q!", ""], [""], ["Zoë", "the", "the"], []]
        got = v.encode_each(sentences)
        assert len(got) == len(sentences)
        for s, ids in zip(sentences, got):
            want = v.encode_batch(s)[0]
            assert ids.dtype == want.dtype == np.int32 and ids.shape == want.shape
            np.testing.assert_array_equal(ids, want)
    assert v.encode_each([]) == []
    assert [m.shape for m in v.encode_each([[], []])] == [(0, 1), (0, 1)]


def test_the_word_cache_is_never_handed_out_and_stays_bounded(monkeypatch):
    v = CharVocab.build(WORDS)
    first = v.encode_batch(["cat", "the"])[0]
    first[:] = 99  # a caller scribbling on its matrix
    again = v.encode_each([["cat", "the"]])[0]
    again[:] = 77
    np.testing.assert_array_equal(v.encode_batch(["cat", "the"])[0], [[v.char_to_id(c) for c in w] for w in ("cat", "the")])
    monkeypatch.setattr(CharVocab, "CACHE_WORDS", 3)
    v.encode_batch([f"w{k}" for k in range(10)])
    assert len(v._encoded) == 3
    assert v.encode_batch(["w9"])[0].tolist() == [v.encode("w9")]  # past the cap: encoded, not cached
    with pytest.raises(AttributeError):
        v.max_chars = 4  # the cache holds encodings clipped to the vocabulary's own cap


def test_save_load_round_trip(tmp_path):
    v = CharVocab.build(WORDS + ["naïve", "\"quote\""], max_chars=6)
    path = tmp_path / "chars.json"
    v.save(path)
    w = CharVocab.load(path)
    assert w.chars == v.chars and w.max_chars == 6
    assert w.encode_batch(["naïve", "x"])[0].tolist() == v.encode_batch(["naïve", "x"])[0].tolist()
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == "tagger-chars"
    assert [p.name for p in tmp_path.iterdir()] == ["chars.json"]  # no temporary left


@pytest.mark.parametrize("content,message", [
    (None, "character vocabulary not found"),
    (b"{\"format\": \"tagger-chars\", ", "damaged character vocabulary"),
    (b"\xff\xfe\x00", "damaged character vocabulary"),
    (b"[\"a\", \"b\"]", "not a tagger character vocabulary"),
    (b"{\"format\": \"tagger-chars\", \"version\": 7, \"chars\": []}", "version 7 is newer than this tagger reads (1)"),
    (b"{\"format\": \"tagger-chars\", \"version\": \"1\", \"chars\": []}", "no valid \"version\""),
    (b"{\"format\": \"tagger-chars\", \"version\": 1, \"chars\": [\"ab\"]}", "\"chars\" must be a list of single characters"),
    (b"{\"format\": \"tagger-chars\", \"version\": 1, \"chars\": [\"a\", \"a\"]}", "lists a character twice"),
    (b"{\"format\": \"tagger-chars\", \"version\": 1, \"chars\": [], \"max_chars\": -2}", "max_chars must be null"),
])
def test_damaged_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "chars.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        CharVocab.load(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text
