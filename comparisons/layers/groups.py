r"""Token groups of the layer analysis: stop words, VADER sentiment words, whole words.

* ``"sentiment"`` — words of the VADER lexicon (Hutto & Gilbert 2014, MIT licence) with
  :math:`|\text{valence}| \ge 1` against all other words. The lexicon is the
  ``vader_lexicon.txt`` of the ``vaderSentiment==3.3.2`` package, a declared dependency
  of the ``harness`` and ``test`` extras, read with :mod:`importlib.resources`
  (:func:`vader_lexicon`); it is not stored in this repository. It ignores negation
  and context: a proxy for "sentiment-bearing", not a rationale.
* ``"stopwords"`` — our own list of English function words (:func:`stop_words`) and
  punctuation against content words.

Groups are decided per *whole word*: the word pieces of a word are merged (the
tokenizer's ``word_ids()`` where the encoding has them, else the pieces' markers: a
WordPiece continuation starts with ``##``, a byte-level BPE or SentencePiece word with
``Ġ``/``▁``), the word is looked up lower-cased, and every piece takes its word's group
(:func:`group_tokens`, :func:`group_masks`).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from captum_perturb import LayerInformation

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_PACKAGE, VADER_FILE = "vaderSentiment", "vader_lexicon.txt"
SENTIMENT_THRESHOLD = 1.0
GROUP_KINDS = ("sentiment", "stopwords", "both")
SENTIMENT, OTHER = "sentiment words (VADER |valence| ≥ 1)", "other words"
STOP, CONTENT = "stop words", "content words"

WordIds = Sequence[int | None]
"""Per token, the index of its word in the sentence (``None``: no word, e.g. [CLS])."""

Encoded = tuple[list[str], list[int | None]]
"""A sentence's tokens and their word ids, as the tokenizer encoded it."""

_STOP_TEXT = (
    # articles and determiners
    "a an the this that these those some any each every no all both few many much more "
    "most other such same own "
    # pronouns
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves he "
    "him his himself she her hers herself it its itself they them their theirs themselves "
    "one who whom whose which what "
    # prepositions
    "about above across after against along among around as at before behind below "
    "between beyond by down during for from in into like of off on out over since "
    "through to towards under until up upon with within without "
    # conjunctions and connectives
    "and but or nor so yet if because while although though than whether unless when "
    "where why how then also too just only very not "
    # auxiliaries and modals, with the words of contractions: SST-2 writes "it 's",
    # "do n't", "we 've", and BERT's tokenizers split these at the apostrophe into the
    # words "s", "n", "t", "ve" (GPT-2's into "'" and "s" or "'t")
    "am is are was were be been being have has had having do does did doing will would "
    "shall should can could may might must s t d ll m re ve n 's 're 've 'd 'll 'm n't "
    # adverbs of place and time that carry no content
    "here there now again "
    # punctuation tokens (any punctuation-only token counts too)
    ". , ; : ! ? ' \" ( ) -"
)
_STOP_WORDS = frozenset(_STOP_TEXT.split())


def stop_words() -> frozenset[str]:
    """Our own list of common English function words and punctuation tokens (lowercase)."""
    return _STOP_WORDS


def normalise_token(token: str) -> str:
    """A word piece as a lexicon word: without ``##``/``Ġ``/``▁`` markers, lowercase."""
    for marker in ("##", "Ġ", "▁"):
        if token.startswith(marker):
            token = token[len(marker) :]
    return token.strip().lower()


def _punctuation(word: str) -> bool:
    return not any(c.isalnum() for c in word)


# ---------------------------------------------------------------------------- VADER
def parse_vader_lexicon(text: str) -> dict[str, float]:
    """``token<TAB>mean valence<TAB>std<TAB>ratings`` lines as ``{token: mean valence}``.

    Example:
        >>> parse_vader_lexicon("good\\t1.9\\t0.9\\t[2, 2]\\nbroken line\\n")
        {'good': 1.9}
    """
    out = {}
    for line in text.splitlines():
        fields = line.strip("\r\n").split("\t")
        if len(fields) < 2 or not fields[0]:
            continue
        try:
            out[fields[0]] = float(fields[1])
        except ValueError:
            continue
    return out


def vader_lexicon() -> dict[str, float]:
    """VADER's 7,500 human-rated words → mean valence (−4 … +4).

    Read from ``vader_lexicon.txt`` inside the installed ``vaderSentiment`` package
    (``importlib.resources``; Hutto & Gilbert 2014, MIT licence).

    Raises:
        ImportError: ``vaderSentiment`` is not installed (the message says how).

    Example:
        >>> vader_lexicon()["good"]
        1.9
    """
    try:
        resource = importlib.resources.files(VADER_PACKAGE) / VADER_FILE
        text = resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ImportError(
            f"the VADER lexicon comes from the {VADER_PACKAGE} package ({err}): "
            f"`pip install {VADER_REQUIREMENT}`, or install the harness extra "
            "(`pip install -e .[harness]`), or pass lexicon=..."
        ) from err
    return parse_vader_lexicon(text)


def token_groups(
    kind: str, lexicon: Mapping[str, float] | None = None
) -> dict[str, Callable[[str], bool]]:
    """Word predicates, ``{group: predicate(word)}``, for :func:`group_masks`.

    A predicate takes a whole word (a single piece works too: markers are removed and
    the word lower-cased first).

    Args:
        kind: ``"sentiment"`` (VADER words with ``|valence| ≥ 1`` / other words),
            ``"stopwords"`` (stop words and punctuation / content words) or ``"both"``.
        lexicon: ``{word: valence}``; default :func:`vader_lexicon` (``"sentiment"`` only).
    """
    if kind not in GROUP_KINDS:
        raise ValueError(f"unknown token groups {kind!r}; choose one of {list(GROUP_KINDS)}")
    out: dict[str, Callable[[str], bool]] = {}
    if kind in ("sentiment", "both"):
        lex = vader_lexicon() if lexicon is None else lexicon

        def sentiment(word: str) -> bool:
            w = normalise_token(word)
            return not _punctuation(w) and abs(lex.get(w, 0.0)) >= SENTIMENT_THRESHOLD

        out[SENTIMENT] = sentiment
        out[OTHER] = lambda word: not sentiment(word)
    if kind in ("stopwords", "both"):

        def stop(word: str) -> bool:
            w = normalise_token(word)
            return w in _STOP_WORDS or _punctuation(w)

        out[STOP] = stop
        out[CONTENT] = lambda word: not stop(word)
    return out


def contrasts(groups: Sequence[str]) -> list[tuple[str, str]]:
    """The group ratios reported: sentiment / other and content / stop, where present."""
    return [(a, b) for a, b in ((SENTIMENT, OTHER), (CONTENT, STOP)) if a in groups]


# ---------------------------------------------------------------------------- whole words
def _continues(prev: str, tok: str, byte_level: bool) -> bool:
    """Whether ``tok`` is a further piece of the word ``prev`` belongs to."""
    if tok.startswith("##"):
        return True
    if not byte_level or tok.startswith(("Ġ", "▁")):
        return False
    # a piece without a marker continues the word, unless one is punctuation ("film.")
    return _punctuation(normalise_token(prev)) == _punctuation(normalise_token(tok))


def word_index(tokens: Sequence[str], skip: Sequence[bool] | None = None) -> list[int | None]:
    """The word each token belongs to, from the word-piece markers alone.

    WordPiece: a piece starting with ``##`` continues the word before it. Byte-level
    BPE (``Ġ``) and SentencePiece (``▁``), recognised by those markers in the sentence:
    a piece without the marker continues the word. Skipped tokens (special, padding,
    empty) belong to no word and end the word before them.

    Example:
        >>> word_index(["[CLS]", "an", "un", "##watch", "##able", "."], [True] + [False] * 5)
        [None, 0, 1, 1, 1, 2]
        >>> word_index(["Ġan", "Ġun", "watch", "able", "."])
        [0, 1, 1, 1, 2]
    """
    skipped = list(skip) if skip is not None else [False] * len(tokens)
    byte_level = any(
        t.startswith(("Ġ", "▁")) for t, s in zip(tokens, skipped, strict=True) if not s
    )
    out: list[int | None] = []
    word, prev = -1, None
    for tok, sp in zip(tokens, skipped, strict=True):
        if sp or not tok:
            out.append(None)
            prev = None
            continue
        if prev is None or not _continues(prev, tok, byte_level):
            word += 1
        out.append(word)
        prev = tok
    return out


def group_tokens(
    tokens: Sequence[str],
    groups: Mapping[str, Callable[[str], bool]],
    *,
    word_ids: WordIds | None = None,
    skip: Sequence[bool] | None = None,
) -> dict[str, list[bool]]:
    """Per group, whether each token of one sentence is in it, decided on its whole word.

    Args:
        tokens: the sentence's tokens (word pieces).
        groups: ``{name: predicate(word)}`` (:func:`token_groups`).
        word_ids: per token, its word (``BatchEncoding.word_ids()``; ``None`` = none);
            default :func:`word_index` from the pieces' markers.
        skip: tokens in no group (special tokens, padding).

    Returns:
        ``{name: [in the group, one per token]}``; a word's text is its pieces without
        markers, joined and lower-cased, and every piece gets the word's answer.
    """
    ids = word_index(tokens, skip) if word_ids is None else list(word_ids)
    if skip is not None:
        ids = [None if s else w for w, s in zip(ids, skip, strict=True)]
    text: dict[int, str] = {}
    for tok, w in zip(tokens, ids, strict=True):
        if w is not None:
            text[w] = text.get(w, "") + normalise_token(tok)
    out = {}
    for name, pick in groups.items():
        verdict = {w: bool(pick(word)) for w, word in text.items()}
        out[name] = [w is not None and verdict[w] for w in ids]
    return out


def tokenizer_words(tokenizer: Any, sentences: Sequence[str]) -> list[Encoded | None]:
    """Each sentence's tokens and word ids as ``tokenizer`` encodes it (truncated).

    ``None`` per sentence where the encoding has no ``word_ids()`` (a slow tokenizer).
    """
    enc = tokenizer(list(sentences), truncation=True)
    out: list[Encoded | None] = []
    for i in range(len(sentences)):
        try:
            out.append((list(enc.tokens(i)), list(enc.word_ids(i))))
        except (ValueError, AttributeError, TypeError):
            out.append(None)
    return out


def group_masks(
    info: LayerInformation,
    groups: Mapping[str, Callable[[str], bool]],
    words: Sequence[Encoded | None] | None = None,
) -> dict[str, torch.Tensor]:
    """``{group: (N, T) bool}``: the real, non-special tokens of each group, by whole word.

    Args:
        info: the explained sentences.
        groups: ``{name: predicate(word)}`` (:func:`token_groups`).
        words: per sentence of ``info``, its tokens and word ids
            (:func:`tokenizer_words`); used where those tokens are the sentence's real
            tokens, else the pieces' markers decide (:func:`word_index`).
    """
    n_sent, width = info.mask.shape
    out = {name: torch.zeros(n_sent, width, dtype=torch.bool) for name in groups}
    for n in range(n_sent):
        real = [t for t in range(width) if bool(info.mask[n, t])]
        tokens = [info.tokens[n][t] for t in real]
        encoded = words[n] if words is not None and n < len(words) else None
        ids = encoded[1] if encoded is not None and encoded[0] == tokens else None
        skip = [bool(info.special[n, t]) for t in real]
        for name, flags in group_tokens(tokens, groups, word_ids=ids, skip=skip).items():
            out[name][n, real] = torch.tensor(flags, dtype=torch.bool)
    return out
