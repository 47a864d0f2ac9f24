"""Real text tasks for in-context learning: datasets, demonstration sampling, prompts.

A task is a list of texts with integer labels 0..C-1, C label words and a prompt template
(:class:`TextDataset`).  It comes from the Hugging Face hub (:func:`load_task`, the paper's
tasks below) or from a local CSV, TSV or JSONL file (:func:`load_local`).  For each test
example, :func:`sample_demos` draws n demonstrations and :func:`build_example` turns them
into a :class:`simkernel.prompts.Example` whose demonstration spans and label positions are
known exactly, without searching the token stream.  :func:`build_prompts` does both.

Tasks (``TASKS``; hub datasets loaded with ``datasets.load_dataset(path, config, split=...)``)

    name                  hub path / config                              split               label words (0, 1, ...)
    sst2                  nyu-mll/glue sst2                              validation          Negative, Positive
    rotten_tomatoes       cornell-movie-review-data/rotten_tomatoes      test                Negative, Positive
    tweet_eval_hate       cardiffnlp/tweet_eval hate                     test                Neutral, Hate
    tweet_eval_irony      cardiffnlp/tweet_eval irony                    test                Neutral, Ironic
    tweet_eval_offensive  cardiffnlp/tweet_eval offensive                test                Neutral, Offensive
    mnli                  nyu-mll/glue mnli                              validation_matched  Yes, Maybe, No

GLUE hides its test labels, so SST-2 and MNLI are evaluated on validation (as in the paper).
Rotten Tomatoes and Tweet Eval publish labelled test splits, the splits their benchmarks
report; we use those (sizes: rotten_tomatoes 1066, hate 2970, irony 784, offensive 860; SST-2
validation has 872, MNLI matched 9815).  Each task's ``pool_split`` is ``train``: pass
``pool=load_task(name, split="train")`` to draw demonstrations from the training split, the
usual ICL practice; without a pool they come from the evaluated split itself, minus the test
example.

Templates.  One line per example, demonstrations separated by ``"\\n"``::

    Input: <text> Output: <label word>                       (sst2, rotten_tomatoes, tweet_eval_*)
    Premise: <premise> Hypothesis: <hypothesis> Output: <Yes|Maybe|No>          (mnli)

SST-2's is the paper's.  The others keep its shape so that only the label words change
between tasks; the Tweet Eval words are the dataset's own class names (non-hate/hate, ...)
with "Neutral" for the negative class, and MNLI's entailment / neutral / contradiction read as
the answers Yes / Maybe / No to "does the premise imply the hypothesis?".  A prompt ends right
after the test line's "Output:", so the model's next token is the answer.  Texts are
whitespace-normalised (runs of spaces, tabs and newlines become one space) so that every
example stays on one line.

Label words are scored on their FIRST token, as it appears after "Output:" (with its leading
space: " Positive").  A multi-token label word is written out in full in the demonstrations,
and its first token is the label position; classes whose words share a first token are
refused (:func:`label_tokens`).

Tokenization is segment by segment (template prefix, text, "Output:", label word,
separator), and the token sequence fed to the model IS the concatenation of the segments'
tokens, so every position is exact by construction.  For byte-level BPE tokenizers (GPT-2,
GPT-J, Pythia, Llama-3) this is token for token what tokenizing the whole prompt gives, because
their pre-tokenizer splits at these boundaries anyway; for others it may differ slightly from
whole-string tokenization, which is acceptable and intended.  Tokenizers that put a space in
front of every input (SentencePiece, Llama-2) are handled by encoding each segment after a
"\\n" anchor and dropping the anchor's tokens, so no spurious space appears between segments.
A prompt starts with the special tokens the tokenizer itself puts before a text (Llama's BOS;
nothing for GPT-2/GPT-J).

Demonstrations (:func:`sample_demos`).  Example ``t``'s demonstrations are drawn with
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(t,)))``, so one example's prompt
does not depend on which other examples are built, in what order or in what batches.  The pool
never offers the test example itself, nor any text equal to it (ignoring case and spacing).
Modes:

- ``random``: n distinct pool items, uniformly, in random order.
- ``balanced``: n // C per class, the n % C left over going to classes chosen at random
  (classes with too few pool items give their share to the others), in random order.
- ``similar``: the n pool items most similar to the test text by TF-IDF cosine similarity
  (lower-cased ``\\w+`` words, smooth idf ``ln((1+N)/(1+df)) + 1`` over the pool, scipy.sparse),
  ordered from least to most similar so that the nearest demonstration sits next to the test
  input; ties are broken at random by the example's seed.

Default n = 8 (``DEFAULT_N_DEMOS``).  The paper's GPT-J-6B has a 2048-token context.  An SST-2
line costs about 6 template tokens plus the sentence (GPT-2 BPE: about 25 tokens on average,
under 70 at most), so 8 demonstrations and the test line take about 280 tokens and at most
about 700; tweets (under about 100 tokens) stay under about 1000, and MNLI pairs fit with
``max_text_tokens`` capping the rare very long premise.  Eight keeps the eager attention that
the measurements capture cheap (it grows as T^2), gives balanced binary prompts 4 + 4, and is
enough demonstrations for GPT-J's ICL accuracy to be well above chance.

Local files (:func:`load_local`) are read with the standard library, not ``datasets``, so the
tool works without it and a file reads the same whether or not it is installed: CSV (quoted as
Excel writes it), TSV (tab-separated, no quoting, GLUE's ``sentence<TAB>label`` with a header
line) and JSONL (one JSON object a line).  A label is a class index (an int, or a string of
one) or a label word (exact, else case-insensitive).  Shipped samples: :func:`sample_data_path`.

Nothing here prints; ``datasets`` is imported only by :func:`load_task`.  Errors in the data or
arguments are one-line ``ValueError`` messages naming the bad value and what is allowed.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .constants import DEMO_MODES, TEXT_N_DEMOS
from .prompts import Example

DEFAULT_N_DEMOS = TEXT_N_DEMOS
MODES = DEMO_MODES
FILE_TYPES = (".csv", ".tsv", ".jsonl")
SAMPLE_FILES = ("sst2_sample.tsv", "sentiment_sample.csv", "sentiment_sample.jsonl")


# ---------------------------------------------------------------------- templates and tasks
@dataclass(frozen=True)
class Template:
    """One example a line: ``"<prefix_1> <text_1> ... <prefix_k> <text_k> <output> <label>"``,
    lines joined by ``separator``.  ``prefixes`` has one entry per text field."""

    prefixes: tuple[str, ...] = ("Input:",)
    output: str = "Output:"
    separator: str = "\n"

    def __post_init__(self):
        object.__setattr__(self, "prefixes", tuple(self.prefixes))


SST2_TEMPLATE = Template()
MNLI_TEMPLATE = Template(prefixes=("Premise:", "Hypothesis:"))


@dataclass(frozen=True)
class Task:
    """A hub dataset with its columns, label words and template."""

    name: str
    path: str
    config: str | None
    split: str
    text_columns: tuple[str, ...]
    label_column: str
    label_words: tuple[str, ...]
    template: Template = SST2_TEMPLATE
    pool_split: str = "train"

    def download_command(self) -> str:
        args = repr(self.path) + (f", {self.config!r}" if self.config else "")
        return f'python -c "import datasets; datasets.load_dataset({args})"'


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sst2", "nyu-mll/glue", "sst2", "validation", ("sentence",), "label", ("Negative", "Positive")),
    Task("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes", None, "test", ("text",), "label",
         ("Negative", "Positive")),
    Task("tweet_eval_hate", "cardiffnlp/tweet_eval", "hate", "test", ("text",), "label", ("Neutral", "Hate")),
    Task("tweet_eval_irony", "cardiffnlp/tweet_eval", "irony", "test", ("text",), "label", ("Neutral", "Ironic")),
    Task("tweet_eval_offensive", "cardiffnlp/tweet_eval", "offensive", "test", ("text",), "label",
         ("Neutral", "Offensive")),
    Task("mnli", "nyu-mll/glue", "mnli", "validation_matched", ("premise", "hypothesis"), "label",
         ("Yes", "Maybe", "No"), MNLI_TEMPLATE),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------------- datasets
@dataclass(eq=False)
class TextDataset:
    """Labelled texts of one task.

    texts        N entries: str, or a tuple of str (one per template field) for pair tasks
    labels       (N,) int64 class indices 0..C-1
    label_words  C strings (the answer after "Output:", without its leading space)
    template     how an example is written on its line
    name         short name (a task name or the file's stem)
    source       where the rows came from (hub path/config/split or the file)
    """

    texts: list
    labels: np.ndarray
    label_words: list[str]
    template: Template = field(default_factory=Template)
    name: str = ""
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_classes(self) -> int:
        return len(self.label_words)

    def fields(self, i: int) -> tuple[str, ...]:
        """Example ``i``'s text fields (a 1-tuple for single-text tasks)."""
        t = self.texts[i]
        return t if isinstance(t, tuple) else (t,)


def _clean(value) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def check_label_words(label_words) -> list[str]:
    if isinstance(label_words, str):
        label_words = label_words.split(",")
    words = [_clean(w) for w in label_words]
    if len(words) < 2:
        raise ValueError(f"label words: need at least 2 classes, got {words!r}")
    if any(not w for w in words):
        raise ValueError(f"label words: empty label word in {words!r}")
    dup = sorted({w for w in words if words.count(w) > 1})
    if dup:
        raise ValueError(f"label words: {dup[0]!r} is given twice in {words!r}")
    return words


def _label_index(value, words: list[str], where: str) -> int:
    idx = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        idx = int(value)
    elif isinstance(value, float) and value.is_integer():
        idx = int(value)
    elif isinstance(value, str):
        s = value.strip()
        if s in words:
            return words.index(s)
        folded = [w.lower() for w in words]
        if folded.count(s.lower()) == 1:
            return folded.index(s.lower())
        if re.fullmatch(r"[+-]?\d+", s):
            idx = int(s)
    if idx is None or not 0 <= idx < len(words):
        raise ValueError(f"{where}: label {value!r} is neither a class index 0..{len(words) - 1} "
                         f"nor one of the label words {', '.join(words)}")
    return idx


def _check_limit(limit):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def _make_dataset(rows: Iterable[tuple[str, Mapping[str, Any]]], columns: Sequence[str], text_column,
                  label_column: str, label_words, template: Template | None, name: str, source: str,
                  limit: int | None) -> TextDataset:
    """Validate and convert (where, row) pairs; ``columns`` (the header) names what exists."""
    _check_limit(limit)
    text_cols = (text_column,) if isinstance(text_column, str) else tuple(text_column)
    if not text_cols:
        raise ValueError("text column: need at least one")
    words = check_label_words(label_words)
    for col in (*text_cols, label_column):
        if col not in columns:
            raise ValueError(f"{source}: no column {col!r}; columns: {', '.join(map(str, columns))}")
    if template is None:
        template = (SST2_TEMPLATE if len(text_cols) == 1 else
                    Template(prefixes=tuple(f"{c.capitalize()}:" for c in text_cols)))
    if len(template.prefixes) != len(text_cols):
        raise ValueError(f"the template has {len(template.prefixes)} text fields "
                         f"({', '.join(template.prefixes)}) but {len(text_cols)} text columns were given "
                         f"({', '.join(text_cols)})")
    texts, labels = [], []
    for where, row in rows:
        if limit is not None and len(texts) >= limit:
            break
        missing = [c for c in (*text_cols, label_column) if c not in row]
        if missing:
            raise ValueError(f"{where}: no column {missing[0]!r}; this row has: {', '.join(map(str, row))}")
        fields_ = tuple(_clean(row[c]) for c in text_cols)
        for c, f in zip(text_cols, fields_):
            if not f:
                raise ValueError(f"{where}: empty text in column {c!r}")
        texts.append(fields_[0] if len(fields_) == 1 else fields_)
        labels.append(_label_index(row[label_column], words, where))
    if not texts:
        raise ValueError(f"{source}: no rows (an empty file, or a header without data)")
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), words, template, name, source)


def _read_table(path: Path, delimiter: str):
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise ValueError(f"{path}: no rows (an empty file, or a header without data)")
        header = [h.strip() for h in header]
        rows = []
        for rec in reader:
            if not rec or not any(x.strip() for x in rec):
                continue
            if len(rec) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(rec)} fields, the header has {len(header)} "
                                 f"({', '.join(header)})")
            rows.append((f"{path}:{reader.line_num}", dict(zip(header, rec))))
    if not rows:
        raise ValueError(f"{path}: no rows (an empty file, or a header without data)")
    return header, rows


def _read_jsonl(path: Path):
    rows, columns = [], []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            if not columns:
                columns = list(obj)
            rows.append((f"{path}:{n}", obj))
    if not rows:
        raise ValueError(f"{path}: no rows (an empty file)")
    return columns, rows


def load_local(path, text_column, label_column: str, label_words, *, template: Template | None = None,
               name: str | None = None, limit: int | None = None) -> TextDataset:
    """A CSV, TSV or JSONL file as a :class:`TextDataset`.

    ``text_column`` is one column name, or a sequence of names for a pair task (each a field of
    ``template``; the default template is SST-2's for one column, ``"<Column>:"`` prefixes for
    several).  ``label_words`` is a sequence (or a comma-separated string) of C words; labels
    in the file are class indices 0..C-1 or label words.  ``limit`` keeps the first rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise ValueError(f"{path}: unknown file type {suffix or '(none)'!r}; allowed: {', '.join(FILE_TYPES)}")
    if suffix == ".jsonl":
        columns, rows = _read_jsonl(path)
    else:
        columns, rows = _read_table(path, "\t" if suffix == ".tsv" else ",")
    return _make_dataset(rows, columns, text_column, label_column, label_words, template,
                         name or path.stem, str(path), limit)


def from_records(records, text_column, label_column: str, label_words, *, template: Template | None = None,
                 name: str = "records", source: str | None = None, limit: int | None = None) -> TextDataset:
    """Rows that are mappings (a list of dicts, or a ``datasets.Dataset``) as a :class:`TextDataset`;
    the same rules as :func:`load_local`."""
    source = source or name
    columns = getattr(records, "column_names", None)
    if columns is None:
        records = list(records)
        columns = list(records[0]) if records else []
    if len(records) == 0:
        raise ValueError(f"{source}: no rows")
    rows = ((f"{source} row {i}", r) for i, r in enumerate(records))
    return _make_dataset(rows, list(columns), text_column, label_column, label_words, template, name, source,
                         limit)


def load_task(name: str, split: str | None = None, limit: int | None = None) -> TextDataset:
    """One of ``TASKS`` through ``datasets.load_dataset`` (its split by default; ``limit`` keeps
    the first rows).  A dataset that is neither cached nor reachable raises a one-line
    ValueError with the command that downloads it."""
    task = get_task(name)
    _check_limit(limit)
    split = task.split if split is None else str(split)
    if task.path == "nyu-mll/glue" and split.startswith("test"):
        raise ValueError(f"task {name!r}: GLUE hides its test labels (all -1), so split {split!r} cannot be "
                         f"scored; use {task.split!r}")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"task {name!r} needs the `datasets` package: pip install 'simkernel[llm]' "
                         f"(or read a local file with --data)") from None
    try:
        from datasets.exceptions import DatasetsError
    except ImportError:  # datasets < 2.15 has no common base; its offline errors are OSErrors
        DatasetsError = OSError
    what = task.path + (f" ({task.config})" if task.config else "")
    try:
        ds = datasets.load_dataset(task.path, task.config, split=split)
    except (OSError, DatasetsError) as e:
        raise ValueError(f"dataset {what} is not available offline ({type(e).__name__}); download it once "
                         f"with network: {task.download_command()}") from None
    except ValueError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"task {name!r}, split {split!r}: {first}") from None
    return from_records(ds, task.text_columns, task.label_column, task.label_words, template=task.template,
                        name=name, source=f"{what} split {split}", limit=limit)


def sample_data_path(name: str) -> Path:
    """The path of a shipped sample file (``SAMPLE_FILES``): 48 hand-written movie-review
    sentences, 24 negative (0) and 24 positive (1), the same rows in each format:
    ``sst2_sample.tsv`` (columns sentence, label: 0/1), ``sentiment_sample.csv`` (review,
    sentiment: negative/positive), ``sentiment_sample.jsonl`` (text, label: 0/1)."""
    if name not in SAMPLE_FILES:
        raise ValueError(f"unknown sample file {name!r}; allowed: {', '.join(SAMPLE_FILES)}")
    return Path(str(resources.files("simkernel") / "data" / name))


# ---------------------------------------------------------------------- demonstrations
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _plain(ds: TextDataset, i: int) -> str:
    """Example i's text fields as one lower-cased, whitespace-normalised string."""
    return " ".join(" ".join(ds.fields(i)).lower().split())


class _TfIdf:
    """TF-IDF rows of the pool (L2-normalised, sparse) and a query's cosine similarity to them."""

    def __init__(self, texts: Sequence[str]):
        from scipy import sparse

        vocab: dict[str, int] = {}
        indptr, indices, data = [0], [], []
        for t in texts:
            counts: dict[int, int] = {}
            for w in _words(t):
                j = vocab.setdefault(w, len(vocab))
                counts[j] = counts.get(j, 0) + 1
            indices.extend(counts)
            data.extend(counts.values())
            indptr.append(len(indices))
        n = len(texts)
        tf = sparse.csr_matrix((np.asarray(data, float), np.asarray(indices, np.int64), np.asarray(indptr)),
                               shape=(n, max(len(vocab), 1)))
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        rows = tf.multiply(self.idf[None, :]).tocsr()
        norm = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
        norm[norm == 0] = 1.0
        self.matrix = sparse.diags(1.0 / norm) @ rows
        self.columns = self.matrix.tocsc()
        self.vocab = vocab

    def similarity(self, text: str) -> np.ndarray:
        """(N,) cosine similarity of ``text`` to every pool text."""
        counts: dict[int, int] = {}
        for w in _words(text):
            j = self.vocab.get(w)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(self.matrix.shape[0])
        cols = np.fromiter(counts, dtype=np.int64)
        q = np.fromiter(counts.values(), dtype=float) * self.idf[cols]
        q /= np.linalg.norm(q)
        return np.asarray(self.columns[:, cols] @ q).ravel()


def _balanced_counts(n: int, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(C,) per-class counts summing to n, as equal as ``available`` allows (needs n <= its sum)."""
    quota = np.zeros_like(available)
    left = n
    while left > 0:
        open_ = np.flatnonzero(quota < available)
        share = left // open_.size
        if share == 0:
            quota[rng.choice(open_, size=left, replace=False)] += 1
            break
        add = np.minimum(share, available[open_] - quota[open_])
        quota[open_] += add
        left -= int(add.sum())
    return quota


def example_rng(seed: int, example_id: int) -> np.random.Generator:
    """The generator for example ``example_id``'s demonstrations: independent of every other id."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(example_id),)))


def sample_demos(dataset: TextDataset, test_ids, n: int = DEFAULT_N_DEMOS, mode: str = "random", seed: int = 0,
                 *, pool: TextDataset | None = None) -> np.ndarray:
    """(len(test_ids), n) int64: for each test example, the indices of its demonstrations in
    ``pool`` (``dataset`` itself when ``pool`` is None), in prompt order.

    Row t depends only on (seed, test_ids[t], the texts and labels): see the module docstring
    for the seeding and the modes.  The test example and pool items with the same text are
    never its demonstrations.
    """
    test_ids = _check_ids(test_ids, len(dataset), "test id")
    if mode not in MODES:
        raise ValueError(f"unknown demonstration mode {mode!r}; allowed: {', '.join(MODES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"the number of demonstrations must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    same = pool is None or pool is dataset
    pool = dataset if pool is None else pool
    if pool.n_classes != dataset.n_classes:
        raise ValueError(f"the pool has {pool.n_classes} classes ({', '.join(pool.label_words)}) but the "
                         f"dataset has {dataset.n_classes} ({', '.join(dataset.label_words)})")
    pool_text = [_plain(pool, i) for i in range(len(pool))]
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(pool_text):
        by_text.setdefault(t, []).append(i)
    tfidf = _TfIdf(pool_text) if mode == "similar" and n > 0 else None
    out = np.empty((len(test_ids), int(n)), dtype=np.int64)
    for row, t in enumerate(test_ids):
        text = _plain(dataset, int(t))
        banned = set(by_text.get(text, ()))
        if same:
            banned.add(int(t))
        keep = np.ones(len(pool), dtype=bool)
        keep[list(banned)] = False
        cand = np.flatnonzero(keep)
        if cand.size < n:
            raise ValueError(f"test example {int(t)}: {n} demonstrations asked for but the pool offers only "
                             f"{cand.size} (the pool has {len(pool)} rows); lower n")
        out[row] = _draw(pool.labels, pool.n_classes, cand, int(n), mode, example_rng(seed, int(t)), tfidf, text)
    return out


def _draw(labels, C, cand, n, mode, rng, tfidf, text) -> np.ndarray:
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if mode == "random":
        return rng.choice(cand, size=n, replace=False)
    if mode == "balanced":
        groups = [cand[labels[cand] == c] for c in range(C)]
        quota = _balanced_counts(n, np.array([g.size for g in groups]), rng)
        picks = np.concatenate([rng.choice(g, size=q, replace=False) for g, q in zip(groups, quota)])
        rng.shuffle(picks)
        return picks
    sims = tfidf.similarity(text)[cand]
    keys = rng.random(cand.size)
    # only items at least as similar as the n-th best can make the cut: sort just those
    top = np.flatnonzero(sims >= np.partition(sims, cand.size - n)[cand.size - n])
    order = top[np.lexsort((keys[top], -sims[top]))]
    return cand[order[:n][::-1]]


def _check_ids(ids, size: int, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what}s must be a 1-D sequence of integers, got {ids!r}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
        raise ValueError(f"{what} {int(bad[0])} is out of range; allowed: 0..{size - 1}")
    return arr


# ---------------------------------------------------------------------- prompts
class _Encoder:
    """Segment tokenization (see the module docstring), memoised per segment."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.anchor = self.plain("\n")
        with_special = self.tok.encode("a", add_special_tokens=True)
        without = self.plain("a")
        k = len(with_special) - len(without)
        self.prefix = list(with_special[:k]) if k > 0 and list(with_special[k:]) == without else []
        self.cache: dict[str, list[int]] = {}

    def plain(self, s: str) -> list[int]:
        return list(self.tok.encode(s, add_special_tokens=False))

    def __call__(self, s: str) -> list[int]:
        ids = self.cache.get(s)
        if ids is None:
            full = self.plain("\n" + s)
            k = len(self.anchor)
            # "\n" merges with a following "\n" in byte-level BPE; then the segment goes alone
            ids = full[k:] if full[:k] == self.anchor and len(full) > k else self.plain(s)
            self.cache[s] = ids
        return ids


def _line(template: Template, fields_: Sequence[str], label: str | None, first: bool) -> list[tuple[str, str]]:
    """The (kind, text) segments of one line: kinds 'text0', 'text1', ..., 'label', and 'fixed'."""
    segs = []
    for j, (p, f) in enumerate(zip(template.prefixes, fields_)):
        segs.append(("first" if first and j == 0 else "fixed", p if j == 0 else " " + p))
        segs.append((f"text{j}", " " + f))
    segs.append(("fixed", " " + template.output))
    if label is not None:
        segs.append(("label", " " + label))
        segs.append(("fixed", template.separator))
    return segs


def prompt_text(dataset: TextDataset, test_idx: int, demo_idx, *, pool: TextDataset | None = None) -> str:
    """The prompt as a string (untruncated): what decoding :func:`build_example`'s tokens gives."""
    pool = dataset if pool is None else pool
    segs = []
    for i in np.asarray(demo_idx, dtype=np.int64).reshape(-1):
        segs += _line(pool.template, pool.fields(int(i)), pool.label_words[pool.labels[i]], not segs)
    segs += _line(dataset.template, dataset.fields(int(test_idx)), None, not segs)
    return "".join(s for _, s in segs)


def label_tokens(tokenizer, label_words) -> np.ndarray:
    """(C,) int64: the token scored for each class, the first token of " <word>" as it is
    tokenized after "Output:".  ``label_words``: C words, or a :class:`TextDataset`.  Classes
    sharing a first token are refused."""
    words = getattr(label_words, "label_words", label_words)
    return _label_tokens(_Encoder(tokenizer), list(words))


def _label_tokens(enc: _Encoder, words: list[str]) -> np.ndarray:
    firsts = []
    for w in words:
        ids = enc(" " + w)
        if not ids:
            raise ValueError(f"label word {w!r} tokenizes to nothing")
        firsts.append(int(ids[0]))
    for a in range(len(words)):
        for b in range(a + 1, len(words)):
            if firsts[a] == firsts[b]:
                piece = enc.tok.decode([firsts[a]])
                raise ValueError(f"label words {words[a]!r} and {words[b]!r} share their first token {piece!r} "
                                 f"(id {firsts[a]}), so they cannot be told apart; choose label words whose first "
                                 f"tokens differ")
    return np.asarray(firsts, dtype=np.int64)


def build_example(tokenizer, dataset: TextDataset, test_idx: int, demo_idx, *, pool: TextDataset | None = None,
                  max_text_tokens: int | None = None, max_length: int | None = None) -> Example:
    """The prompt of test example ``test_idx`` with demonstrations ``demo_idx`` ((n,) indices
    into ``pool``, default ``dataset``), tokenized segment by segment.

    Returns an :class:`Example`: input_ids (T,), spans (n, 2) [first token of x_i, label
    position + 1), label_pos (n,) (the first token of y_i's label word), demo_labels (n,),
    gold (the test label).  Each text field is cut to ``max_text_tokens`` tokens when given; a
    prompt longer than ``max_length`` tokens raises ValueError.  Indices are trusted (see
    :func:`build_prompts` for the checked entry point).  ``demo_idx=[]`` gives the standalone
    prompt "Input: <x> Output:".
    """
    return _build(_Encoder(tokenizer), dataset, int(test_idx), np.asarray(demo_idx, dtype=np.int64).reshape(-1),
                  dataset if pool is None else pool, max_text_tokens, max_length)


def _build(enc: _Encoder, dataset: TextDataset, test_idx: int, demo_idx: np.ndarray, pool: TextDataset,
           max_text_tokens: int | None, max_length: int | None) -> Example:
    ids = list(enc.prefix)
    spans = np.empty((demo_idx.size, 2), dtype=np.int64)
    pos = np.empty(demo_idx.size, dtype=np.int64)

    def emit(segs, d=None):
        for kind, s in segs:
            if kind == "first":
                toks = enc.plain(s)
            else:
                toks = enc(s)
                if kind.startswith("text") and max_text_tokens is not None:
                    toks = toks[:max_text_tokens]
            if d is not None and kind == "text0":
                spans[d, 0] = len(ids)
            if d is not None and kind == "label":
                pos[d] = len(ids)
                spans[d, 1] = len(ids) + 1
            ids.extend(toks)

    for d, i in enumerate(demo_idx):
        emit(_line(pool.template, pool.fields(int(i)), pool.label_words[pool.labels[i]], d == 0), d)
    emit(_line(dataset.template, dataset.fields(test_idx), None, demo_idx.size == 0))
    if max_length is not None and len(ids) > max_length:
        cap = f"max_text_tokens={max_text_tokens}" if max_text_tokens is not None else "no max_text_tokens"
        raise ValueError(f"the prompt of example {test_idx} has {len(ids)} tokens, more than max_length="
                         f"{max_length} ({demo_idx.size} demonstrations, {cap}); use fewer demonstrations or a "
                         f"smaller max_text_tokens")
    return Example(np.asarray(ids, dtype=np.int64), spans, pos, pool.labels[demo_idx].astype(np.int64),
                   int(dataset.labels[test_idx]))


def build_prompts(tokenizer, dataset: TextDataset, test_ids, n_demos: int = DEFAULT_N_DEMOS, mode: str = "random",
                  seed: int = 0, *, pool: TextDataset | None = None, max_text_tokens: int | None = None,
                  max_length: int | None = None, return_demos: bool = False):
    """One :class:`Example` per test id: :func:`sample_demos` then :func:`build_example`.

    Checks the arguments and that the label words' first tokens differ (the scored tokens are
    ``label_tokens(tokenizer, dataset.label_words)``).  With ``return_demos`` the result is
    ``(examples, demo_ids)``, ``demo_ids`` (len(test_ids), n) each prompt's demonstration
    indices into ``pool`` (``dataset`` when None), as :func:`sample_demos` returns them.
    """
    for what, v in (("max_text_tokens", max_text_tokens), ("max_length", max_length)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{what} must be a positive integer or None, got {v!r}")
    if pool is not None and list(pool.label_words) != list(dataset.label_words):
        raise ValueError(f"the pool's label words ({', '.join(pool.label_words)}) differ from the dataset's "
                         f"({', '.join(dataset.label_words)})")
    enc = _Encoder(tokenizer)
    _label_tokens(enc, list(dataset.label_words))
    demos = sample_demos(dataset, test_ids, n_demos, mode, seed, pool=pool)
    test_ids = np.asarray(test_ids, dtype=np.int64).reshape(-1)
    pool = dataset if pool is None else pool
    examples = [_build(enc, dataset, int(t), d, pool, max_text_tokens, max_length) for t, d in zip(test_ids, demos)]
    return (examples, demos) if return_demos else examples
