"""tagger: BiLSTM sequence labelling and sentence classification on hand-written Numba kernels.

    import tagger
    model = tagger.load("runs/model")          # a model directory or a training output folder
    model.predict(["The cat sat on the mat."])  # -> [{"tokens": ..., "tags": ..., "spans": ...}]
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a saved model (a model directory, or a `tagger train` output folder)."""
    from tagger.io import load_model

    return load_model(path, device=device)
