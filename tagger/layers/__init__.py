"""Keras-like layers over the ops backends: NumPy arrays in and out on the CPU.

    y, backprop = layer.forward(x, spans=None, train=True); dx = backprop(dy)
        spans: a tagger.spans.Spans (the batch's padding), or a Keras mask= converted once
    layer(x, mask=None) -> inference output
    get_weights() / set_weights() in Keras layouts
    CRF: identity in the stack; loss / decode / marginals on the emissions (layers/crf.py)
    GlobalMaxPooling1D, GlobalAveragePooling1D: (B, T, F) -> (B, F) over the real steps
    CharEncoder: char ids (B, T, C) -> (B, T, F); WordFeatures: WordInputs (word ids, char
        ids, char lengths) -> (B, T, E + F), the first stage of a model.chars network
"""
from tagger.spans import Spans

from .base import Layer, as_spans, deserialize, serialize
from .core import Dense, Dropout, Embedding
from .crf import CRF
from .pooling import GlobalAveragePooling1D, GlobalMaxPooling1D
from .recurrent import LSTM, Bidirectional
from .sequential import Sequential
from .conv import Conv1D
from .wrappers import TimeDistributed
from .chars import CharEncoder, WordFeatures, WordInputs

__all__ = [
    "Layer", "Embedding", "Dense", "Dropout", "LSTM", "Bidirectional", "CRF",
    "GlobalMaxPooling1D", "GlobalAveragePooling1D", "Sequential", "Spans", "as_spans",
    "serialize", "deserialize", "Conv1D", "TimeDistributed", "CharEncoder",
    "WordFeatures", "WordInputs",
]
