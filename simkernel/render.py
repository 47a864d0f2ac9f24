"""A world's symbols as text: each symbol one token of a real tokenizer, prompts and documents as token ids.

A real LLM reads the simulator's prompts as text.  :func:`choose_symbols` maps each of the
world's V symbols to a string that is ONE token of the tokenizer: the delimiter to a newline,
every other symbol to a short common word with its leading space (" the", " and", ...), tried
in a fixed order (:data:`COMMON_WORDS`, then the tokenizer's own single-token lowercase words
in id order, the order of a BPE's merges: a vocabulary entry that is the tokenizer's own
word-boundary marker and lowercase letters, "Ġword" for GPT-2's byte-level BPE, "▁word" for
SentencePiece/Metaspace), so one tokenizer and one world always give the same mapping.  A
string is accepted only when it is a single token on its own, its token is no other symbol's,
and every ordered pair of accepted strings (itself included) tokenizes as the two tokens, so
the text a user would write tokenizes back to exactly the ids built here; the finished mapping
is checked once more the same way, special tokens included (:func:`check_round_trip`).

SentencePiece tokenizers (Llama-2's; transformers' ``LlamaTokenizer``) put a word-boundary
marker "▁" in front of every text, so a lone newline is two tokens ("▁", newline) while
" the" may be one ("▁the": transformers' Metaspace merges the space into the marker) or two
("▁", "▁the": Llama-2's normaliser adds its own).  :func:`text_lead` finds the text to put in
front ("" or one space) after which EVERY text starting with a symbol's string begins with the
same ids (the *lead*: nothing for GPT-2/J, the lone "▁" for SentencePiece), the same whether the
first symbol is a word or the delimiter; the lead then belongs to the prefix like a BOS, and a
string counts as one token when it encodes to the lead and one id.

The layout is the sampler's, one symbol one token, nothing added: a demonstration
``x_1 .. x_{k-1} y`` is a line of k words and the delimiter ends it, e.g. for k = 3
``" the cat and\\n the dog to\\n the cat"``; the model's next token after x_test is its answer.
The tokens a tokenizer puts in front of every text (a BOS and the lone "▁", for Llama-style
tokenizers) come first.  Positions are never searched for: :func:`render_batch` maps a symbol-space
:class:`~simkernel.prompts.PromptBatch` (``alignment.examples_from_prompts``, positions
recorded by the sampler's layout) and shifts every span and label position by the prefix.

numpy only; a tokenizer is any Hugging Face tokenizer (``encode``, ``decode``, ``len``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .prompts import PromptBatch, collate

#: Tried first, in this order, so that GPT-2, Pythia and GPT-J render a world alike.
COMMON_WORDS = (
    "the", "and", "to", "of", "a", "in", "is", "it", "that", "for", "on", "with", "as", "was", "he", "be",
    "at", "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which", "one", "you",
    "were", "all", "we", "her", "she", "there", "would", "their", "will", "when", "who", "him", "been", "has",
    "more", "if", "no", "out", "so", "up", "said", "what", "its", "about", "than", "into", "them", "can",
    "only", "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first", "any",
    "my", "now", "such", "like", "our", "over", "man", "me", "even", "most", "made", "after", "also", "did",
    "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down",
    "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very",
    "make", "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life",
    "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great",
    "old", "year", "off", "come", "since", "against", "go", "came", "right", "used", "take", "three",
    "house", "red", "blue", "green", "dog", "cat", "sun", "tree", "car", "book", "water", "fire")
#: A word a vocabulary scan accepts after COMMON_WORDS: a space and lowercase letters.
_WORD = re.compile(r" [a-z]+")
DELIMITER_TEXT = "\n"


@dataclass(frozen=True)
class SymbolMap:
    """How one world's symbols are written for one tokenizer.

    strings     (V,) the text of each symbol (the delimiter's is a newline)
    token_ids   (V,) int64: the one token id of each string
    prefix_ids  (P,) int64: the ids the tokenizer puts before every text (empty for GPT-2/J;
                BOS and "▁" for Llama-style SentencePiece tokenizers)
    pad_id      the id left padding uses (never read: the attention mask hides it)
    delimiter   the world's delimiter symbol
    labels      (L,) the world's label symbols
    tokenizer   the tokenizer's name and size, for the record
    lead        the text written before the strings ("" unless the tokenizer needs a space
                there for its prefix to be the same for every text, :func:`text_lead`)
    """

    strings: tuple
    token_ids: np.ndarray
    prefix_ids: np.ndarray
    pad_id: int
    delimiter: int
    labels: np.ndarray
    tokenizer: dict
    lead: str = ""

    @property
    def n_symbols(self) -> int:
        return len(self.strings)

    @property
    def label_ids(self) -> np.ndarray:
        """(L,) the token ids of the world's labels."""
        return self.token_ids[self.labels]

    def ids(self, tokens) -> np.ndarray:
        """(..., P + T) int64 token ids of symbol arrays (..., T), the prefix first."""
        tokens = np.asarray(tokens)
        body = self.token_ids[tokens]
        pre = np.broadcast_to(self.prefix_ids, tokens.shape[:-1] + (self.prefix_ids.size,))
        return np.concatenate([pre, body], axis=-1)

    def text(self, tokens) -> str:
        """The text a user would type for the symbols (T,): the strings back to back (after the
        lead, when the tokenizer needs one)."""
        return self.lead + "".join(self.strings[int(t)] for t in np.asarray(tokens).reshape(-1))

    def to_dict(self) -> dict:
        """JSON-able form (what the outputs store; :meth:`from_dict` reads it back).  ``lead`` is
        stored only when not empty, so a GPT-2/J mapping's form is the one it always had."""
        d = {"strings": list(self.strings), "token_ids": self.token_ids.tolist(),
             "prefix_ids": self.prefix_ids.tolist(), "pad_id": int(self.pad_id), "delimiter": int(self.delimiter),
             "labels": self.labels.tolist(), "tokenizer": dict(self.tokenizer)}
        if self.lead:
            d["lead"] = self.lead
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SymbolMap":
        return cls(tuple(d["strings"]), np.asarray(d["token_ids"], dtype=np.int64),
                   np.asarray(d["prefix_ids"], dtype=np.int64).reshape(-1), int(d["pad_id"]), int(d["delimiter"]),
                   np.asarray(d["labels"], dtype=np.int64).reshape(-1), dict(d["tokenizer"]), str(d.get("lead", "")))

    def save(self, path) -> Path:
        """Write the mapping as JSON (atomically)."""
        from .store import write_json

        return write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path) -> "SymbolMap":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"symbol map {str(path)!r} cannot be read ({type(e).__name__})") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, SymbolMap) and self.to_dict() == other.to_dict()

    __hash__ = None


def _encode(tokenizer, text: str) -> list:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _prefix(tokenizer, lead=()) -> np.ndarray:
    """The ids the tokenizer adds in front of every text: its special tokens (a BOS for
    Llama-style tokenizers), then the ``lead`` (:func:`text_lead`)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer.encode("a"))
    n = len(full) - len(plain)
    return np.asarray((full[:n] if n > 0 and full[n:] == plain else []) + list(lead), dtype=np.int64)


@dataclass(frozen=True)
class Lead:
    """What every rendered text starts with: ``text`` written before the strings and the ``ids``
    it always encodes to (:func:`text_lead`); ``newline`` the newline's one id after it."""

    text: str
    ids: tuple
    newline: int


def _blank(tokenizer, ids) -> bool:
    """Whether ``ids`` are nothing but word-boundary markers / whitespace (SentencePiece's "▁")."""
    return all(not tokenizer.decode([i]).strip() and not tokenizer.convert_ids_to_tokens(i).strip("▁Ġ ")
               for i in ids)


def text_lead(tokenizer) -> Lead | None:
    """The :class:`Lead` of ``tokenizer``, or None when no newline is one token after it.

    Tried in order: no text (GPT-2/J: a newline is one token and nothing is added, so this is
    the byte-level case, unchanged; Llama-2's normaliser: "\\n" -> "▁", newline and " the" ->
    "▁", "▁the", a lead of "▁"), then one space (transformers' Metaspace, which merges a leading
    space into its marker: "  the" -> "▁", "▁the" and " \\n" -> "▁", newline).  A lead other
    than nothing must be whitespace only, and a common word must give it too (one id after it),
    so that a text starting with a word and one starting with the delimiter begin alike."""
    for text in ("", " "):
        ids = _encode(tokenizer, text + DELIMITER_TEXT)
        if not ids or len(ids) > 2:
            continue
        *lead, nl = ids
        if not lead and not text:
            return Lead("", (), int(nl))
        if not _blank(tokenizer, lead) or tokenizer.decode([nl]) != DELIMITER_TEXT:
            continue
        for w in COMMON_WORDS[:20]:
            got = _encode(tokenizer, text + " " + w)
            if len(got) == len(lead) + 1 and got[:-1] == lead and _is_marked(tokenizer, got[-1], w):
                return Lead(text, tuple(int(i) for i in lead), int(nl))
    return None


def _is_marked(tokenizer, i: int, w: str) -> bool:
    """Whether token ``i`` is the word ``w`` with one word-boundary marker in front ("▁w", "Ġw")."""
    raw = tokenizer.convert_ids_to_tokens(int(i))
    return (isinstance(raw, str) and len(raw) == len(w) + 1 and raw.endswith(w)
            and not (raw[0].isascii() and raw[0].isalnum()))


def _pad_id(tokenizer) -> int:
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if v is not None:
            return int(v)
    return 0


def _tokenizer_record(tokenizer) -> dict:
    return {"name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
            "class": type(tokenizer).__name__, "size": int(len(tokenizer))}


_NO_LEAD = Lead("", (), -1)


def _body(tokenizer, s: str, lead: Lead = _NO_LEAD) -> list:
    """The ids of ``s`` after the lead (None when its encoding does not start with the lead)."""
    ids = _encode(tokenizer, lead.text + s)
    n = len(lead.ids)
    return ids[n:] if tuple(ids[:n]) == lead.ids else None


def _single(tokenizer, s: str, lead: Lead = _NO_LEAD):
    """The one id of ``s`` (after the lead), or None when it is not exactly one token."""
    ids = _body(tokenizer, s, lead)
    return int(ids[0]) if ids is not None and len(ids) == 1 else None


def _pairs_ok(tokenizer, strings: list, ids: list, new: int = 0, lead: Lead = _NO_LEAD) -> int | None:
    """None when every ordered pair of ``strings`` (itself included) with at least one string
    from index ``new`` on tokenizes as the two ids (after the lead); else the index of a string
    in a failing pair (the later one).  ``new`` = the strings already checked among themselves."""
    n = len(strings)
    order = [(a, b) for a in range(n) for b in range(n) if a >= new or b >= new]
    # one text holds every ordered pair (and the joints between pairs, also pairs): one encode
    text = "".join(strings[a] + strings[b] for a, b in order)
    want = [ids[i] for a, b in order for i in (a, b)]
    if _body(tokenizer, text, lead) == want:
        return None
    for a, b in order:
        if _body(tokenizer, strings[a] + strings[b], lead) != [ids[a], ids[b]]:
            return max(a, b)
    # a failure only across more than two strings: blame the last
    return n - 1


def word_marker(tokenizer, lead: Lead = _NO_LEAD) -> str | None:
    """The character the tokenizer's vocabulary writes a word's leading space as ("Ġ" for
    byte-level BPE, "▁" for SentencePiece), read off the token of the first common word that is
    one token; None when none is."""
    for w in COMMON_WORDS[:20]:
        i = _single(tokenizer, " " + w, lead)
        if i is not None and _is_marked(tokenizer, i, w):
            return tokenizer.convert_ids_to_tokens(i)[0]
    return None


def candidate_strings(tokenizer, lead: Lead = _NO_LEAD):
    """Every string a symbol may get, in the order they are tried (a generator): " w" for w in
    :data:`COMMON_WORDS`, then the tokenizer's single-token words in id order: a vocabulary
    entry that decodes to a space and lowercase letters, or that is the tokenizer's
    :func:`word_marker` and lowercase letters (SentencePiece decodes a lone "▁word" without its
    space); the vocabulary is read only when the common words run out."""
    seen = set()
    for w in COMMON_WORDS:
        s = " " + w
        if s not in seen:
            seen.add(s)
            yield s
    try:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    except (TypeError, ValueError, IndexError):
        pieces = []
    marker = word_marker(tokenizer, lead)
    raw = []
    if marker is not None and marker != " ":
        try:
            raw = tokenizer.convert_ids_to_tokens(list(range(len(pieces))))
        except (TypeError, ValueError, IndexError):
            raw = []
    word = re.compile(re.escape(marker or "") + "[a-z]+")
    for i, s in enumerate(pieces):
        if not _WORD.fullmatch(s):
            r = raw[i] if i < len(raw) else None
            if not (isinstance(r, str) and word.fullmatch(r)):
                continue
            s = " " + r[len(marker):]
        if s not in seen:
            seen.add(s)
            yield s


def check_round_trip(tokenizer, smap: SymbolMap, tokens) -> None:
    """One-line ValueError unless the text of the symbols ``tokens`` (T,) (:meth:`SymbolMap.text`)
    tokenizes, special tokens included, to exactly ``smap.ids(tokens)``."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    text = smap.text(tokens)
    got = list(tokenizer.encode(text))
    want = smap.ids(tokens).tolist()
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        name = _tokenizer_record(tokenizer)["name"]
        raise ValueError(f"tokenizer {name!r} encodes the rendered text {text[:60]!r} as {len(got)} ids, not the "
                         f"{len(want)} ids rendered (first difference at id {at}); allowed: tokenizers that encode "
                         f"each symbol's string as one token wherever it stands")


def _all_pairs(V: int, first: int) -> np.ndarray:
    """Symbols holding every ordered pair of 0..V-1, starting with ``first``."""
    order = [first] + [v for v in range(V) if v != first]
    return np.asarray([x for a in order for b in order for x in (a, b)], dtype=np.int64)


def _checked(tokenizer, smap: SymbolMap) -> SymbolMap:
    """``smap`` after :func:`check_round_trip` on every ordered pair of its symbols, starting
    once with the delimiter and once with another symbol (the prefix must not depend on it)."""
    V, d = smap.n_symbols, int(smap.delimiter)
    check_round_trip(tokenizer, smap, _all_pairs(V, d))
    if V > 1:
        check_round_trip(tokenizer, smap, _all_pairs(V, (d + 1) % V))
    return smap


def choose_symbols(tokenizer, world, symbols=None) -> SymbolMap:
    """The :class:`SymbolMap` of ``world`` (V symbols, its delimiter and labels) for
    ``tokenizer``.  ``symbols``: V strings to use instead of the automatic choice (the
    delimiter's included), checked the same way.  One-line ValueErrors: a tokenizer without a
    one-token newline, a world with more symbols than the tokenizer offers one-token strings
    for, two label symbols the tokenizer cannot tell apart, a given string that is not one token."""
    V, d = int(world.n_symbols), int(world.delimiter)
    labels = np.asarray(world.labels, dtype=np.int64)
    name = _tokenizer_record(tokenizer)["name"]
    lead = text_lead(tokenizer)
    if symbols is not None:
        return _given(tokenizer, world, list(symbols), lead or _NO_LEAD)
    if lead is None:
        raise ValueError(f"tokenizer {name!r} does not encode a newline as one token (after the word-boundary "
                         f"marker it puts in front of a text); the delimiter needs one (allowed: byte-level BPE "
                         f"tokenizers such as GPT-2's, GPT-J's, Pythia's, and SentencePiece ones such as Llama-2's)")
    nl = lead.newline
    strings, ids = [DELIMITER_TEXT], [nl]
    need = V - 1
    for s in candidate_strings(tokenizer, lead):
        if len(strings) > need:
            break
        i = _single(tokenizer, s, lead)
        if i is None or i in ids:
            continue
        if _pairs_ok(tokenizer, strings + [s], ids + [i], new=len(strings), lead=lead) is None:
            strings.append(s)
            ids.append(i)
    if len(strings) <= need:
        raise ValueError(f"world has {V} symbols but tokenizer {name!r} offers only {len(strings)} one-token "
                         f"strings (a newline and {len(strings) - 1} words) that stay apart when written side by "
                         f"side; allowed: worlds with at most {len(strings)} symbols (e.g. --set n_symbols=...)")
    # symbol order: the delimiter gets the newline, the others the words in the order found
    order = [DELIMITER_TEXT] * V
    tok = [nl] * V
    rest = iter(zip(strings[1:], ids[1:]))
    for v in range(V):
        if v != d:
            order[v], tok[v] = next(rest)
    return _checked(tokenizer, SymbolMap(tuple(order), np.asarray(tok, dtype=np.int64), _prefix(tokenizer, lead.ids),
                                         _pad_id(tokenizer), d, labels, _tokenizer_record(tokenizer), lead.text))


def _given(tokenizer, world, strings: list, lead: Lead = _NO_LEAD) -> SymbolMap:
    V, d = int(world.n_symbols), int(world.delimiter)
    labels = np.asarray(world.labels, dtype=np.int64)
    name = _tokenizer_record(tokenizer)["name"]
    if len(strings) != V:
        raise ValueError(f"symbols has {len(strings)} strings; allowed: one per symbol of the world ({V})")
    firsts = [(_body(tokenizer, s, lead) or [None])[0] for s in strings]
    for a in labels:
        for b in labels:
            if a < b and firsts[a] is not None and firsts[a] == firsts[b]:
                raise ValueError(f"symbols: labels {a} ({strings[a]!r}) and {b} ({strings[b]!r}) share their first "
                                 f"token {firsts[a]} in tokenizer {name!r}, so it cannot separate them; allowed: "
                                 f"label strings with distinct first tokens")
    ids = []
    for v, s in enumerate(strings):
        i = _single(tokenizer, s, lead)
        if i is None:
            what = "the delimiter" if v == d else ("label" if v in set(labels.tolist()) else "symbol") + f" {v}"
            n = len(_body(tokenizer, s, lead) or _encode(tokenizer, s))
            raise ValueError(f"symbols: {what}'s string {s!r} is {n} tokens of tokenizer "
                             f"{name!r}; allowed: strings that are one token")
        if i in ids:
            raise ValueError(f"symbols: {strings[ids.index(i)]!r} and {s!r} are the same token {i}; allowed: "
                             f"strings with distinct tokens")
        ids.append(i)
    bad = _pairs_ok(tokenizer, strings, ids, lead=lead)
    if bad is not None:
        raise ValueError(f"symbols: {strings[bad]!r} merges with a neighbour when written side by side in "
                         f"tokenizer {name!r}; allowed: strings that stay separate tokens")
    return _checked(tokenizer, SymbolMap(tuple(strings), np.asarray(ids, dtype=np.int64), _prefix(tokenizer, lead.ids),
                                         _pad_id(tokenizer), d, labels, _tokenizer_record(tokenizer), lead.text))


def render_batch(smap: SymbolMap, batch: PromptBatch) -> PromptBatch:
    """A symbol-space :class:`PromptBatch` (B, T) -> the same prompts as token ids (B, P + T):
    every real symbol mapped, the prefix put right before each prompt's first symbol (inside
    the left padding), every span and label position shifted by P, the label tokens mapped."""
    B, T = batch.input_ids.shape
    P = smap.prefix_ids.size
    mask = batch.attention_mask.astype(bool)
    ids = np.full((B, T + P), smap.pad_id, dtype=np.int64)
    ids[:, P:] = np.where(mask, smap.token_ids[np.where(mask, batch.input_ids, 0)], smap.pad_id)
    new_mask = np.zeros((B, T + P), dtype=np.int64)
    new_mask[:, P:] = mask
    if P:
        first = T - mask.sum(1)                                 # the first real symbol, old coordinates
        cols = first[:, None] + np.arange(P)[None, :]           # new coordinates of the prefix
        ids[np.arange(B)[:, None], cols] = smap.prefix_ids[None, :]
        new_mask[np.arange(B)[:, None], cols] = 1
    return PromptBatch(ids, new_mask, batch.spans + P, batch.label_pos + P, batch.demo_labels, batch.gold,
                       smap.token_ids[np.asarray(batch.label_tokens, dtype=np.int64)])


def render_prompts(smap: SymbolMap, world, prompts) -> PromptBatch:
    """The sampler's ``prompts`` (B, L symbols) as a token-id :class:`PromptBatch` with every
    demonstration's span and label position (``alignment.examples_from_prompts``)."""
    from .alignment import examples_from_prompts

    return render_batch(smap, collate(examples_from_prompts(world, prompts), world.labels))


def render_documents(smap: SymbolMap, tokens) -> np.ndarray:
    """(N, P + L) token ids of N documents of L symbols (no padding: documents share a length)."""
    return smap.ids(np.asarray(tokens, dtype=np.int64))
