"""Data: readers, tag schemes, vocabularies, pretrained vectors and batching.

    readers   read_examples(path, format, **options) -> Iterator[Example]
    schemes   spans(tags, scheme), convert(tags, src, dst)
    vocab     pretokenize(text), WordVocab, LabelVocab
    vectors   read_vectors(path), embedding_matrix(vocab, vectors, rng)
    batching  PaddedBatch, make_batches(...), restore_order(...)
"""

from tagger.data.types import Example

__all__ = ["Example"]
