"""Spans: the one description of padding that every layer, loss, CRF and pooling reads.

Legend: B batch, T timesteps (padded).

    starts  (B,) int64   sequence b occupies steps starts[b] .. starts[b] + lengths[b] - 1
    lengths (B,) int64   0 <= lengths[b], starts[b] + lengths[b] <= T
    timesteps    int     T, the padded width the spans lie in

Post-padding has starts = 0, pre-padding starts = T - lengths; both follow the same rule
in every op (tagger/ops/reference.py's docstring). A batch computes its Spans once
(`PaddedBatch.spans`); a Keras-style `mask=` at the public layer API is converted once,
by `Spans.from_mask`, and the same object is handed down the whole chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tagger.errors import TaggerError


@dataclass(frozen=True)
class Spans:
    starts: np.ndarray  # (B,) int64
    lengths: np.ndarray  # (B,) int64
    timesteps: int  # T
    _mask: list = field(default_factory=list, repr=False, compare=False)  # cache of mask()

    def __post_init__(self):
        starts = np.ascontiguousarray(self.starts, dtype=np.int64)
        lengths = np.ascontiguousarray(self.lengths, dtype=np.int64)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "timesteps", int(self.timesteps))
        check_spans(starts, lengths, len(starts), self.timesteps)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def full(cls, batch: int, timesteps: int) -> Spans:
        """Every step of every row is real (no padding)."""
        return cls(np.zeros(batch, np.int64), np.full(batch, timesteps, np.int64), timesteps)

    @classmethod
    def from_lengths(cls, lengths, timesteps: int, padding: str = "post") -> Spans:
        """Spans of (B,) lengths, padded after ('post') or before ('pre') the real steps."""
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if padding not in ("post", "pre"):
            raise TaggerError(f"padding must be 'post' or 'pre', got {padding!r}")
        if lengths.size and ((lengths < 0).any() or (lengths > timesteps).any()):
            raise TaggerError(f"lengths must lie in 0..{timesteps} (the padded timesteps)")
        starts = np.zeros_like(lengths) if padding == "post" else timesteps - lengths
        return cls(starts, lengths, timesteps)

    @classmethod
    def from_mask(cls, mask, batch: int, timesteps: int) -> Spans:
        """Spans of a Keras-style mask: a boolean (B, T) array (True = real step) whose real
        steps form one run per row, or a (B,) array of lengths (post-padding); None means
        no padding. A row with a gap is refused (see docs/architecture.md, "Masks")."""
        if mask is None:
            return cls.full(batch, timesteps)
        if isinstance(mask, Spans):
            if mask.batch != batch or mask.timesteps != timesteps:
                raise TaggerError(
                    f"spans for (batch, timesteps) = {(mask.batch, mask.timesteps)} given to an input of {(batch, timesteps)}"
                )
            return mask
        mask = np.asarray(mask)
        if mask.ndim == 1:
            if mask.shape[0] != batch:
                raise TaggerError(f"lengths has {mask.shape[0]} entries for a batch of {batch}")
            return cls.from_lengths(mask, timesteps)
        if mask.shape != (batch, timesteps):
            raise TaggerError(f"mask shape {mask.shape} does not match the input's (batch, timesteps) = {(batch, timesteps)}")
        mask = mask.astype(bool)
        lengths = mask.sum(axis=1).astype(np.int64)
        starts = np.where(lengths > 0, mask.argmax(axis=1), 0).astype(np.int64)
        spans = cls(starts, lengths, timesteps)
        if not np.array_equal(spans.mask(), mask):
            bad = int(np.nonzero((spans.mask() != mask).any(axis=1))[0][0])
            raise TaggerError(f"mask row {bad} has a gap: each row must be one run of real steps (pre- or post-padding)")
        return spans

    # -- views --------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return int(self.starts.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def mask(self) -> np.ndarray:
        """(B, T) bool, True on real steps (computed once)."""
        if not self._mask:
            t = np.arange(self.timesteps)[None, :]
            self._mask.append((t >= self.starts[:, None]) & (t < (self.starts + self.lengths)[:, None]))
        return self._mask[0]

    def take(self, rows) -> Spans:
        """The spans of a subset of rows (same T)."""
        return Spans(self.starts[rows], self.lengths[rows], self.timesteps)


def check_spans(starts, lengths, batch: int, timesteps: int, where: str = "spans") -> None:
    """Raise TaggerError unless (starts, lengths) are B int spans inside 0..T.

    The one checker of padding; every ops backend calls it at its entry points too, so no
    span can make a kernel read or write out of bounds."""
    starts, lengths = np.asarray(starts), np.asarray(lengths)
    if starts.shape != (batch,) or lengths.shape != (batch,):
        raise TaggerError(
            f"{where}: starts and lengths must have shape ({batch},) (one per row), got {starts.shape} and {lengths.shape}"
        )
    if batch == 0:
        return
    if starts.dtype.kind not in "iu" or lengths.dtype.kind not in "iu":
        raise TaggerError(f"{where}: starts and lengths must be integers, got {starts.dtype} and {lengths.dtype}")
    if starts.min() < 0 or lengths.min() < 0:
        raise TaggerError(f"{where}: starts and lengths must be >= 0")
    if (starts.astype(np.int64) + lengths).max() > timesteps:
        raise TaggerError(f"{where}: a span runs past the {timesteps} padded timesteps (starts + lengths > T)")
