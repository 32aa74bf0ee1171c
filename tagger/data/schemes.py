"""Tag schemes for spans: IOB1, BIO (IOB2), BIOES, and ``none`` (labels that are not spans).

A tag is ``O`` or ``PREFIX-TYPE``; like conlleval, the prefix is everything before the
first ``-`` and the type everything after it.

Chunk boundaries follow conlleval's ``endOfChunk`` / ``startOfChunk`` (reimplemented in
:func:`end_of_chunk` / :func:`start_of_chunk`):

* an ``I-`` after ``O`` opens a chunk (so IOB1 and loose BIO read the same way);
* a change of type ends the previous chunk and opens a new one;
* ``B-`` after ``B-``/``I-`` of the same type ends one chunk and opens the next (IOB1 adjacency);
* ``E-`` followed by ``E-``/``I-`` ends and reopens.

Plain conlleval has no rule for ``S-`` and none for ``E-`` followed by ``B-``, so on BIOES
input it merges ``S-X S-X`` or ``B-X E-X B-X E-X`` into one chunk.  For ``bioes`` we add
the missing rules (a chunk always ends after ``E-``/``S-`` and before ``B-``/``S-``, and
``B-``/``S-`` always start one);
on IOB1/BIO tags the functions are exactly conlleval's.  Scoring BIOES output therefore
converts it to BIO first (see :mod:`tagger.metrics`).

``spans(tags, scheme)`` returns ``[(type, start, end_exclusive), ...]``;
``convert(tags, src, dst)`` re-encodes via spans, so spans are preserved exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagger.errors import DataError

SCHEMES = ("iob1", "bio", "bioes", "none")
PREFIXES = {"iob1": "BI", "bio": "BI", "bioes": "BIES"}

Span = tuple[str, int, int]


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER" -> ("B", "PER")``; ``"O" -> ("O", "")`` (conlleval's ``/^([^-]*)-(.*)$/``)."""
    prefix, dash, kind = tag.partition("-")
    return (prefix, kind) if dash else (tag, "")


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str, bioes: bool = False) -> bool:
    """conlleval ``endOfChunk``: does a chunk end between the previous token and this one?"""
    end = (prev_tag, tag) in _END_PAIRS
    if prev_tag != "O" and prev_tag != "." and prev_type != type_:
        end = True
    if prev_tag in ("]", "["):
        end = True
    if bioes and (prev_tag in ("E", "S") or tag in ("B", "S")):
        end = True
    return end


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str, bioes: bool = False) -> bool:
    """conlleval ``startOfChunk``: does a chunk start at this token?"""
    start = (prev_tag, tag) in _START_PAIRS
    if tag != "O" and tag != "." and prev_type != type_:
        start = True
    if tag in ("[", "]"):
        start = True
    if bioes and tag in ("B", "S"):
        start = True
    return start


_END_PAIRS = frozenset(
    [("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")]
)
_START_PAIRS = frozenset(
    [("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")]
)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise DataError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme == "none":
        raise DataError("scheme 'none' has no spans; set data.scheme to iob1, bio or bioes for span labels")


def spans(tags: Sequence[str], scheme: str = "bio") -> list[Span]:
    """Chunks of one sentence as ``(type, start, end_exclusive)``, in order."""
    _check_scheme(scheme)
    bioes = scheme == "bioes"
    out: list[Span] = []
    prev_tag, prev_type = "O", ""
    start = None
    for i, tag in enumerate(list(tags) + ["O"]):  # a trailing O closes the last chunk, as a boundary does
        t, ty = split_tag(tag)
        if start is not None and end_of_chunk(prev_tag, t, prev_type, ty, bioes):
            out.append((prev_type, start, i))
            start = None
        if start_of_chunk(prev_tag, t, prev_type, ty, bioes):
            start = i
        prev_tag, prev_type = t, ty
    return out


def from_spans(chunks: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Encode non-overlapping spans as tags of ``scheme``; other tokens are ``O``."""
    _check_scheme(scheme)
    tags = ["O"] * length
    prev_end, prev_type = -1, None
    for kind, start, end in sorted(chunks, key=lambda c: c[1]):
        if scheme == "bioes":
            if end - start == 1:
                tags[start] = f"S-{kind}"
            else:
                tags[start] = f"B-{kind}"
                for i in range(start + 1, end - 1):
                    tags[i] = f"I-{kind}"
                tags[end - 1] = f"E-{kind}"
        else:
            for i in range(start, end):
                tags[i] = f"I-{kind}"
            if scheme == "bio" or (prev_end == start and prev_type == kind):
                tags[start] = f"B-{kind}"
        prev_end, prev_type = end, kind
    return tags


def convert(tags: Sequence[str], src: str, dst: str) -> list[str]:
    """Re-encode one sentence's tags from scheme ``src`` to ``dst`` (``none`` -> ``none`` only)."""
    if src == dst:
        if src not in SCHEMES:
            _check_scheme(src)
        return list(tags)
    if "none" in (src, dst):
        raise DataError(f"cannot convert tags between {src!r} and {dst!r}; scheme 'none' has no spans")
    return from_spans(spans(tags, src), len(tags), dst)


def invalid_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """Distinct tags that are not ``O`` or ``P-TYPE`` with a prefix allowed in ``scheme``."""
    if scheme == "none":
        return []
    _check_scheme(scheme)
    allowed = PREFIXES[scheme]
    bad = []
    for tag in dict.fromkeys(tags):
        if tag == "O":
            continue
        prefix, kind = split_tag(tag)
        if prefix not in allowed or len(prefix) != 1 or not kind:
            bad.append(tag)
    return bad


def scheme_problem(tags: Sequence[str], scheme: str) -> tuple[int, str] | None:
    """The first tag of one sentence that ``scheme`` cannot have produced, as (index, why);
    None when the sentence fits.

    Every scheme: a tag must be ``O`` or ``P-TYPE`` with an allowed prefix. ``bioes`` is
    also strict about order (a ``B-``/``I-`` chunk ends with ``E-``, a one-token chunk is
    ``S-``), which is how BIO files read as bioes are caught: their tags are all allowed
    prefixes. IOB1 and loose BIO (``I-`` after ``O``) are not refused for ``bio``: conlleval
    and the conversions read them the same way.
    """
    if scheme == "none":
        return None
    allowed = PREFIXES[scheme]
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if tag != "O" and (prefix not in allowed or len(prefix) != 1 or not kind):
            return i, f"is not O or {'/'.join(p + '-TYPE' for p in allowed)}"
        if scheme != "bioes":
            continue
        nxt_prefix, nxt_kind = split_tag(tags[i + 1]) if i + 1 < len(tags) else ("O", "")
        inside_next = nxt_prefix in ("I", "E") and nxt_kind == kind
        if prefix in ("B", "I") and not inside_next:
            return i, f"does not continue with I-{kind} or E-{kind}, as a bioes chunk must (one-token chunks are S-{kind})"
        prv_prefix, prv_kind = split_tag(tags[i - 1]) if i > 0 else ("O", "")
        if prefix in ("I", "E") and not (prv_prefix in ("B", "I") and prv_kind == kind):
            return i, f"does not follow B-{kind} or I-{kind}, as inside a bioes chunk it must"
    return None


# ----------------------------------------------------------------------------------------
# the tag grammar a CRF decodes within


def allowed_transitions(tags: Sequence[str], scheme: str):
    """Which tag sequences ``scheme`` can produce, as three boolean masks over ``tags``
    (a CRF's tag ids, in the scheme it is trained in):

        start_ok (K,)    tag j may open a sentence
        trans_ok (K, K)  tag i may be followed by tag j
        end_ok (K,)      tag i may close a sentence

    The rules (X, Y entity types; a type must match where it is named):

        bio    I-X only after B-X or I-X (so never first)
        iob1   B-X only after I-X or B-X (it separates two adjacent chunks of one type; so
               never first); I-X may open a chunk anywhere
        bioes  B-X and I-X are followed by I-X or E-X (so never last); I-X and E-X follow
               B-X or I-X; O, E-X and S-X are followed by O, B-Y or S-Y; first: O, B, S
        none   everything allowed

    Exactly the sequences that `convert` / `from_spans` write, so decoding within them
    never produces a tag sequence the scheme's span reading must repair. A tag that is not
    ``P-TYPE`` with one of the scheme's prefixes is treated as ``O``.
    """
    if scheme not in SCHEMES:
        _check_scheme(scheme)
    K = len(tags)
    start_ok, trans_ok, end_ok = np.ones(K, bool), np.ones((K, K), bool), np.ones(K, bool)
    if scheme == "none":
        return start_ok, trans_ok, end_ok
    parts = [split_tag(t) for t in tags]
    parts = [(p, k) if len(p) == 1 and p in PREFIXES[scheme] and k else ("O", "") for p, k in parts]
    for j, (pj, kj) in enumerate(parts):
        start_ok[j] = pj not in _NEVER_FIRST[scheme]
        end_ok[j] = pj not in _NEVER_LAST[scheme]
        for i, (pi, ki) in enumerate(parts):
            trans_ok[i, j] = _may_follow(scheme, pi, ki, pj, kj)
    return start_ok, trans_ok, end_ok


_NEVER_FIRST = {"bio": "I", "iob1": "B", "bioes": "IE"}
_NEVER_LAST = {"bio": "", "iob1": "", "bioes": "BI"}


def _may_follow(scheme: str, pi: str, ki: str, pj: str, kj: str) -> bool:
    """May tag (pj, kj) follow tag (pi, ki) in `scheme` (prefix, type; "O" has type "")?"""
    if scheme == "bio":
        return pj != "I" or (pi in ("B", "I") and ki == kj)
    if scheme == "iob1":
        return pj != "B" or (pi in ("B", "I") and ki == kj)
    # bioes: inside a chunk only its continuation; outside one only O or a new chunk
    if pi in ("B", "I"):
        return pj in ("I", "E") and ki == kj
    return pj in ("O", "B", "S")
