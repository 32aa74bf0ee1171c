"""Generate the small sample corpora in this folder from hand-written templates.

Every sentence is invented here (no corpus text is used).  Run from anywhere:

    python corpora/make_samples.py

Output (deterministic, seed 13):
    sample_pos.{train,dev}.conllu   250 / 50 sentences, UPOS tags (CoNLL-U, 10 columns)
    sample_ner.{train,dev}.conll    250 / 60 sentences, "token TAG" with BIO tags (PER LOC ORG MISC)
    sample_cls.{train,dev}.tsv      300 / 60 texts, header "sentence<TAB>label", labels positive|negative|neutral
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- POS lexicon
DET = ["the", "a", "this", "that", "every", "some", "no", "each"]
ADJ = ["big", "small", "red", "old", "young", "happy", "quiet", "bright", "cold", "busy", "green", "tired", "clever"]
NOUNS = [  # (singular, plural)
    ("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("city", "cities"), ("book", "books"),
    ("car", "cars"), ("river", "rivers"), ("farmer", "farmers"), ("song", "songs"), ("window", "windows"),
    ("garden", "gardens"), ("letter", "letters"), ("child", "children"), ("boat", "boats"), ("apple", "apples"),
    ("doctor", "doctors"), ("house", "houses"), ("train", "trains"), ("bird", "birds"), ("table", "tables"),
]
PROPN = ["Maria", "Tomas", "Lisbon", "Kenya", "Oskar", "Aiko", "Delhi", "Priya", "Nairobi", "Elena", "Ravi", "Quebec"]
SUBJ = ["I", "you", "he", "she", "we", "they"]
OBJ = ["me", "you", "him", "her", "us", "them", "it"]
TRANS = [  # (past, base)
    ("saw", "see"), ("found", "find"), ("bought", "buy"), ("liked", "like"), ("painted", "paint"),
    ("visited", "visit"), ("carried", "carry"), ("washed", "wash"), ("opened", "open"), ("followed", "follow"),
    ("wrote", "write"), ("fixed", "fix"),
]
INTRANS = [("slept", "sleep"), ("laughed", "laugh"), ("arrived", "arrive"), ("waited", "wait"), ("sang", "sing"),
           ("left", "leave"), ("smiled", "smile"), ("worked", "work")]
MODAL = ["will", "can", "should", "must", "might"]
ADV = ["quickly", "slowly", "often", "never", "yesterday", "today", "again", "carefully", "soon", "later"]
ADP = ["in", "on", "near", "with", "under", "from", "behind", "at"]
CCONJ = ["and", "but", "or"]
SCONJ = ["because", "when", "although", "if", "while"]
NUM = ["two", "three", "five", "seven", "12", "40", "ten"]
INTJ = ["oh", "wow", "well", "yes", "hey"]


def _np(rng: random.Random, role: str) -> list[tuple[str, str]]:
    r = rng.random()
    if r < 0.15:
        return [(rng.choice(PROPN), "PROPN")]
    if r < 0.30:
        return [(rng.choice(SUBJ if role == "subj" else OBJ), "PRON")]
    if r < 0.40:
        out = [(rng.choice(NUM), "NUM")]
        if rng.random() < 0.5:
            out.append((rng.choice(ADJ), "ADJ"))
        return out + [(rng.choice(NOUNS)[1], "NOUN")]
    out = [(rng.choice(DET), "DET")]
    if rng.random() < 0.45:
        out.append((rng.choice(ADJ), "ADJ"))
    return out + [(rng.choice(NOUNS)[0], "NOUN")]


def _vp(rng: random.Random) -> list[tuple[str, str]]:
    r = rng.random()
    if r < 0.35:
        past, _ = rng.choice(TRANS)
        return [(past, "VERB")] + _np(rng, "obj")
    if r < 0.55:
        return [(rng.choice(INTRANS)[0], "VERB")]
    if r < 0.80:
        out = [(rng.choice(MODAL), "AUX")]
        if rng.random() < 0.3:
            out.append(("not", "PART"))
        _, base = rng.choice(TRANS)
        return out + [(base, "VERB")] + _np(rng, "obj")
    # "did" + "n't": written as the multiword token "didn't" by write_conllu
    _, base = rng.choice(TRANS + INTRANS)
    out = [("did", "AUX"), ("n't", "PART"), (base, "VERB")]
    if base in {b for _, b in TRANS}:
        out += _np(rng, "obj")
    return out


def _clause(rng: random.Random) -> list[tuple[str, str]]:
    out = _np(rng, "subj") + _vp(rng)
    if rng.random() < 0.35:
        out += [(rng.choice(ADP), "ADP")] + _np(rng, "obj")
    if rng.random() < 0.3:
        out.append((rng.choice(ADV), "ADV"))
    return out


def pos_sentence(rng: random.Random) -> list[tuple[str, str]]:
    r = rng.random()
    if r < 0.15:
        words = _clause(rng) + [(",", "PUNCT"), (rng.choice(CCONJ), "CCONJ")] + _clause(rng)
    elif r < 0.30:
        words = [(rng.choice(SCONJ).capitalize(), "SCONJ")] + _clause(rng) + [(",", "PUNCT")] + _clause(rng)
    elif r < 0.40:
        words = [(rng.choice(INTJ).capitalize(), "INTJ"), (",", "PUNCT")] + _clause(rng)
    elif r < 0.50:
        _, base = rng.choice(TRANS)
        words = [(rng.choice(MODAL).capitalize(), "AUX")] + _np(rng, "subj") + [(base, "VERB")] + _np(rng, "obj")
        return _cap(words) + [("?", "PUNCT")]
    elif r < 0.58:
        words = [("Please", "INTJ"), (rng.choice(TRANS)[1], "VERB")] + _np(rng, "obj") + [
            ("to", "ADP")] + _np(rng, "obj")
    else:
        words = _clause(rng)
    return _cap(words) + [(rng.choice([".", ".", ".", "!"]), "PUNCT")]


def _cap(words: list[tuple[str, str]]) -> list[tuple[str, str]]:
    first, tag = words[0]
    return [(first[0].upper() + first[1:], tag)] + words[1:]


def _detok(forms: list[str]) -> str:
    text = ""
    for f in forms:
        if text and f not in (".", ",", "!", "?", "n't"):
            text += " "
        text += f
    return text


LEMMAS = {"did": "do", "n't": "not", **{past: base for past, base in TRANS + INTRANS},
          **{plural: sing for sing, plural in NOUNS}}


def write_conllu(path: Path, sentences: list[list[tuple[str, str]]], prefix: str) -> None:
    lines = []
    for k, words in enumerate(sentences, 1):
        forms = [w for w, _ in words]
        lines += [f"# sent_id = {prefix}-{k}", f"# text = {_detok(forms)}"]
        for i, (form, upos) in enumerate(words, 1):
            if form == "did" and i < len(words) and words[i][0] == "n't":
                lines.append(f"{i}-{i + 1}\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_")
            lemma = LEMMAS.get(form.lower(), form.lower() if upos not in ("PROPN", "PRON") else form)
            lines.append(f"{i}\t{form}\t{lemma}\t{upos}\t_\t_\t_\t_\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- NER
FIRST = ["Alina", "Boris", "Chidi", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kalani", "Luca",
         "Mirela", "Nadim", "Odile", "Pavel", "Rosa", "Sione", "Tarek", "Una"]
LAST = ["Vrell", "Ostrander", "Makeba", "Quill", "Tamsin", "Drovik", "Ferrando", "Haldane", "Nkemelu", "Sorrel"]
LOC = [["Valmora"], ["Port", "Elsin"], ["New", "Carrow"], ["Tessaly"], ["Ambridge"], ["Lake", "Orun"],
       ["Kestovia"], ["Mount", "Idel"], ["Sanvera"], ["Brisk", "Harbour"]]
ORG = [["Brightwell", "Systems"], ["Kestrel", "Bank"], ["Northfield", "United"], ["Orvane", "Institute"],
       ["Lumen", "Press"], ["Halcyon", "Airways"], ["Redfern", "Council"], ["Tidewater", "Labs"]]
MISC = [["Valmoran"], ["Kestovian"], ["Harvest", "Cup"], ["Sanveran"], ["Winter", "Games"], ["Orun", "Prize"]]

NER_TEMPLATES = [
    "{PER} visited {LOC} on Monday .",
    "{ORG} opened a new office in {LOC} .",
    "{PER} , the head of {ORG} , said the plan was ready .",
    "The {MISC} team beat {ORG} in {LOC} .",
    "{PER} won the {MISC} last year .",
    "Shares of {ORG} rose after {PER} spoke .",
    "{PER} and {PER} met in {LOC} .",
    "Officials in {LOC} praised {ORG} .",
    "{PER} moved from {LOC} to {LOC} in spring .",
    "The {MISC} minister thanked {PER} .",
    "{ORG} signed a deal with {ORG} .",
    "Fans of {ORG} travelled to {LOC} for the {MISC} .",
    "According to {PER} , prices in {LOC} fell .",
    "It rained all week .",
    "{PER} works for {ORG} .",
]


def _entity(rng: random.Random, kind: str) -> list[str]:
    if kind == "PER":
        return [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.7 else [])
    return list(rng.choice({"LOC": LOC, "ORG": ORG, "MISC": MISC}[kind]))


def ner_sentence(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for piece in rng.choice(NER_TEMPLATES).split():
        if piece.startswith("{") and piece.endswith("}"):
            kind = piece[1:-1]
            for j, word in enumerate(_entity(rng, kind)):
                out.append((word, ("B-" if j == 0 else "I-") + kind))
        else:
            out.append((piece, "O"))
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    lines = ["-DOCSTART- O", ""]
    for words in sentences:
        lines += [f"{w} {t}" for w, t in words] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------- classification
POS_ADJ = ["wonderful", "charming", "moving", "funny", "brilliant", "delightful", "clever", "warm", "lovely"]
NEG_ADJ = ["dull", "boring", "clumsy", "awful", "tedious", "messy", "shallow", "painful", "bland"]
THINGS = ["film", "story", "acting", "script", "ending", "music", "cast", "plot", "dialogue", "soundtrack"]
NEUTRAL = [
    "the {t} runs about two hours .",
    "the {t} was released in march .",
    "the {t} is based on a novel .",
    "the {t} was shot in three cities .",
    "the director also wrote the {t} .",
    "the {t} opens in theaters on friday .",
    "this is the second {t} by the studio .",
    "the {t} has a rating of pg-13 .",
]
POSITIVE = [
    "the {t} is {p} .",
    "a {p} and {p} {t} .",
    "what a {p} {t} !",
    "i loved the {p} {t} .",
    "the {t} is not {n} at all .",
    "easily the most {p} {t} of the year .",
    "the {t} was {p} , and the cast was {p} .",
]
NEGATIVE = [
    "the {t} is {n} .",
    "a {n} and {n} {t} .",
    "what a {n} {t} .",
    "i hated the {n} {t} .",
    "the {t} is not {p} at all .",
    "easily the most {n} {t} of the year .",
    "the {t} was {n} , and the cast was {n} .",
]


def cls_example(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative", "neutral"])
    pool = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}[label]
    template = rng.choice(pool)
    text = template
    while "{p}" in text:
        text = text.replace("{p}", rng.choice(POS_ADJ), 1)
    while "{n}" in text:
        text = text.replace("{n}", rng.choice(NEG_ADJ), 1)
    return text.replace("{t}", rng.choice(THINGS)), label


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(13)
    pos = [pos_sentence(rng) for _ in range(300)]
    write_conllu(HERE / "sample_pos.train.conllu", pos[:250], "train")
    write_conllu(HERE / "sample_pos.dev.conllu", pos[250:], "dev")
    ner = [ner_sentence(rng) for _ in range(310)]
    write_conll(HERE / "sample_ner.train.conll", ner[:250])
    write_conll(HERE / "sample_ner.dev.conll", ner[250:])
    cls = [cls_example(rng) for _ in range(360)]
    write_tsv(HERE / "sample_cls.train.tsv", cls[:300])
    write_tsv(HERE / "sample_cls.dev.tsv", cls[300:])


if __name__ == "__main__":
    main()
