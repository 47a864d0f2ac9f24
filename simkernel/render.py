"""A world's symbols as text: each symbol one token of a real tokenizer, prompts and documents as token ids.

A real LLM reads the simulator's prompts as text.  :func:`choose_symbols` maps each of the
world's V symbols to a string that is ONE token of the tokenizer: the delimiter to a newline,
every other symbol to a short common word with its leading space (" the", " and", ...), tried
in a fixed order (:data:`COMMON_WORDS`, then the tokenizer's own single-token lowercase words
in id order, the order of a BPE's merges), so one tokenizer and one world always give the same
mapping.  A string is accepted only when it is a single token on its own, its token is no
other symbol's, and every ordered pair of accepted strings (itself included) tokenizes as the
two tokens, so the text a user would write tokenizes back to exactly the ids built here.

The layout is the sampler's, one symbol one token, nothing added: a demonstration
``x_1 .. x_{k-1} y`` is a line of k words and the delimiter ends it, e.g. for k = 3
``" the cat and\\n the dog to\\n the cat"``; the model's next token after x_test is its answer.
The tokens a tokenizer puts in front of every text (a BOS, for Llama-style tokenizers) come
first.  Positions are never searched for: :func:`render_batch` maps a symbol-space
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
    prefix_ids  (P,) int64: the ids the tokenizer puts before every text (empty for GPT-2/J)
    pad_id      the id left padding uses (never read: the attention mask hides it)
    delimiter   the world's delimiter symbol
    labels      (L,) the world's label symbols
    tokenizer   the tokenizer's name and size, for the record
    """

    strings: tuple
    token_ids: np.ndarray
    prefix_ids: np.ndarray
    pad_id: int
    delimiter: int
    labels: np.ndarray
    tokenizer: dict

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
        """The text a user would type for the symbols (T,): the strings back to back."""
        return "".join(self.strings[int(t)] for t in np.asarray(tokens).reshape(-1))

    def to_dict(self) -> dict:
        """JSON-able form (what the outputs store; :meth:`from_dict` reads it back)."""
        return {"strings": list(self.strings), "token_ids": self.token_ids.tolist(),
                "prefix_ids": self.prefix_ids.tolist(), "pad_id": int(self.pad_id), "delimiter": int(self.delimiter),
                "labels": self.labels.tolist(), "tokenizer": dict(self.tokenizer)}

    @classmethod
    def from_dict(cls, d: dict) -> "SymbolMap":
        return cls(tuple(d["strings"]), np.asarray(d["token_ids"], dtype=np.int64),
                   np.asarray(d["prefix_ids"], dtype=np.int64).reshape(-1), int(d["pad_id"]), int(d["delimiter"]),
                   np.asarray(d["labels"], dtype=np.int64).reshape(-1), dict(d["tokenizer"]))

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


def _prefix(tokenizer) -> np.ndarray:
    """The ids the tokenizer adds in front of every text (a BOS for Llama-style tokenizers)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer.encode("a"))
    n = len(full) - len(plain)
    return np.asarray(full[:n] if n > 0 and full[n:] == plain else [], dtype=np.int64)


def _pad_id(tokenizer) -> int:
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if v is not None:
            return int(v)
    return 0


def _tokenizer_record(tokenizer) -> dict:
    return {"name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
            "class": type(tokenizer).__name__, "size": int(len(tokenizer))}


def _single(tokenizer, s: str):
    """The one id of ``s``, or None when it is not exactly one token."""
    ids = _encode(tokenizer, s)
    return int(ids[0]) if len(ids) == 1 else None


def _pairs_ok(tokenizer, strings: list, ids: list, new: int = 0) -> int | None:
    """None when every ordered pair of ``strings`` (itself included) with at least one string
    from index ``new`` on tokenizes as the two ids; else the index of a string in a failing
    pair (the later one).  ``new`` = the strings already checked among themselves."""
    n = len(strings)
    order = [(a, b) for a in range(n) for b in range(n) if a >= new or b >= new]
    # one text holds every ordered pair (and the joints between pairs, also pairs): one encode
    text = "".join(strings[a] + strings[b] for a, b in order)
    want = [ids[i] for a, b in order for i in (a, b)]
    if _encode(tokenizer, text) == want:
        return None
    for a, b in order:
        if _encode(tokenizer, strings[a] + strings[b]) != [ids[a], ids[b]]:
            return max(a, b)
    # a failure only across more than two strings: blame the last
    return n - 1


def candidate_strings(tokenizer):
    """Every string a symbol may get, in the order they are tried (a generator): " w" for w in
    :data:`COMMON_WORDS`, then the tokenizer's single-token words (a space and lowercase
    letters) in id order; the vocabulary is decoded only when the common words run out."""
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
    for s in pieces:
        if _WORD.fullmatch(s) and s not in seen:
            seen.add(s)
            yield s


def choose_symbols(tokenizer, world, symbols=None) -> SymbolMap:
    """The :class:`SymbolMap` of ``world`` (V symbols, its delimiter and labels) for
    ``tokenizer``.  ``symbols``: V strings to use instead of the automatic choice (the
    delimiter's included), checked the same way.  One-line ValueErrors: a tokenizer without a
    one-token newline, a world with more symbols than the tokenizer offers one-token strings
    for, two label symbols the tokenizer cannot tell apart, a given string that is not one token."""
    V, d = int(world.n_symbols), int(world.delimiter)
    labels = np.asarray(world.labels, dtype=np.int64)
    name = _tokenizer_record(tokenizer)["name"]
    nl = _single(tokenizer, DELIMITER_TEXT)
    if symbols is not None:
        return _given(tokenizer, world, list(symbols))
    if nl is None:
        raise ValueError(f"tokenizer {name!r} does not encode a newline as one token; the delimiter needs one "
                         f"(allowed: byte-level BPE tokenizers such as GPT-2's, GPT-J's, Pythia's)")
    strings, ids = [DELIMITER_TEXT], [nl]
    need = V - 1
    for s in candidate_strings(tokenizer):
        if len(strings) > need:
            break
        i = _single(tokenizer, s)
        if i is None or i in ids:
            continue
        if _pairs_ok(tokenizer, strings + [s], ids + [i], new=len(strings)) is None:
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
    return SymbolMap(tuple(order), np.asarray(tok, dtype=np.int64), _prefix(tokenizer), _pad_id(tokenizer), d,
                     labels, _tokenizer_record(tokenizer))


def _given(tokenizer, world, strings: list) -> SymbolMap:
    V, d = int(world.n_symbols), int(world.delimiter)
    labels = np.asarray(world.labels, dtype=np.int64)
    name = _tokenizer_record(tokenizer)["name"]
    if len(strings) != V:
        raise ValueError(f"symbols has {len(strings)} strings; allowed: one per symbol of the world ({V})")
    firsts = [(_encode(tokenizer, s) or [None])[0] for s in strings]
    for a in labels:
        for b in labels:
            if a < b and firsts[a] is not None and firsts[a] == firsts[b]:
                raise ValueError(f"symbols: labels {a} ({strings[a]!r}) and {b} ({strings[b]!r}) share their first "
                                 f"token {firsts[a]} in tokenizer {name!r}, so it cannot separate them; allowed: "
                                 f"label strings with distinct first tokens")
    ids = []
    for v, s in enumerate(strings):
        i = _single(tokenizer, s)
        if i is None:
            what = "the delimiter" if v == d else ("label" if v in set(labels.tolist()) else "symbol") + f" {v}"
            raise ValueError(f"symbols: {what}'s string {s!r} is {len(_encode(tokenizer, s))} tokens of tokenizer "
                             f"{name!r}; allowed: strings that are one token")
        if i in ids:
            raise ValueError(f"symbols: {strings[ids.index(i)]!r} and {s!r} are the same token {i}; allowed: "
                             f"strings with distinct tokens")
        ids.append(i)
    bad = _pairs_ok(tokenizer, strings, ids)
    if bad is not None:
        raise ValueError(f"symbols: {strings[bad]!r} merges with a neighbour when written side by side in "
                         f"tokenizer {name!r}; allowed: strings that stay separate tokens")
    return SymbolMap(tuple(strings), np.asarray(ids, dtype=np.int64), _prefix(tokenizer), _pad_id(tokenizer), d,
                     labels, _tokenizer_record(tokenizer))


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
