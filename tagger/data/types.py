"""The record every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    """One sentence (tagging) or one text (classification).

    tokens:  the words, already split (corpus tokens, or the pre-tokenizer's output for raw text).
    labels:  one label per token for tagging tasks; ``None`` for classification or unlabelled input.
    label:   the class of the whole text for classification; ``None`` otherwise.
    text:    the raw text the tokens came from (classification / raw-text input), else ``None``.
    offsets: ``(start, end)`` character offsets of each token in ``text`` when known, else ``None``.
    source:  ``"FILE:LINE"`` where the example starts, for error messages.
    rows:    column readers with ``keep_rows=True`` only: every line of the sentence's block as
             ``(line number, line, token index or None)`` (None: a comment, a multiword range
             or an empty node), so `tagger predict` can write the input's own columns back.
    """

    tokens: list[str]
    labels: list[str] | None = None
    label: str | None = None
    text: str | None = None
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)
    source: str | None = field(default=None, repr=False, compare=False)
    rows: list[tuple[int, str, int | None]] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tokens)
