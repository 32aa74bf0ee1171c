"""tagger: BiLSTM sequence labelling and sentence classification on hand-written Numba kernels."""

__version__ = "0.1.0"
