"""textdata: local files and hub tasks, demonstration sampling, exact prompt positions.

Tokenizers are trained on the shipped sample texts (tests/llm_helpers.py): a byte-level BPE
like GPT-J's and a SentencePiece-style one like Llama-2's.  Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from llm_helpers import train_llama2_style_tokenizer, train_tokenizer  # noqa: E402

from simkernel import textdata as td  # noqa: E402
from simkernel.prompts import collate  # noqa: E402

WORDS = ["Negative", "Positive"]


def sst2_sample():
    return td.load_local(td.sample_data_path("sst2_sample.tsv"), "sentence", "label", WORDS)


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg


# ---------------------------------------------------------------------- tasks
def test_registry_holds_the_papers_tasks():
    assert set(td.TASKS) == {"sst2", "rotten_tomatoes", "tweet_eval_hate", "tweet_eval_irony",
                             "tweet_eval_offensive", "mnli"}
    sst2 = td.get_task("sst2")
    assert (sst2.path, sst2.config, sst2.split, sst2.text_columns, sst2.label_column) == \
        ("nyu-mll/glue", "sst2", "validation", ("sentence",), "label")
    assert sst2.label_words == ("Negative", "Positive")
    mnli = td.get_task("mnli")
    assert (mnli.split, mnli.text_columns, mnli.label_words) == \
        ("validation_matched", ("premise", "hypothesis"), ("Yes", "Maybe", "No"))
    for t in td.TASKS.values():
        assert len(t.template.prefixes) == len(t.text_columns)
        assert t.path in t.download_command()


def test_sst2_template_is_the_papers():
    ds = td.TextDataset(["a fine film", "a dull film"], np.array([1, 0]), WORDS, td.TASKS["sst2"].template)
    assert td.prompt_text(ds, 1, [0]) == "Input: a fine film Output: Positive\nInput: a dull film Output:"


def test_unknown_task():
    with pytest.raises(ValueError) as e:
        td.load_task("sst3")
    one_line_error(e, "'sst3'", "sst2", "mnli", "tweet_eval_irony")


def test_glue_test_splits_have_no_labels():
    with pytest.raises(ValueError) as e:
        td.load_task("mnli", split="test_matched")
    one_line_error(e, "'test_matched'", "'validation_matched'")


def test_load_task_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError) as e:
        td.load_task("sst2")
    one_line_error(e, "datasets", "pip install")


def test_load_task_wraps_an_unreachable_hub(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cardiffnlp/tweet_eval' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ValueError) as e:
        td.load_task("tweet_eval_irony")
    one_line_error(e, "cardiffnlp/tweet_eval (irony)", "not available offline",
                   "datasets.load_dataset('cardiffnlp/tweet_eval', 'irony')")


def test_load_task_offline_for_real(tmp_path):
    """The real datasets library in offline mode with an empty cache."""
    pytest.importorskip("datasets")
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    code = textwrap.dedent("""
        from simkernel import textdata
        try:
            textdata.load_task("sst2", limit=5)
        except ValueError as e:
            print(e)
        else:
            print("loaded")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line
    assert "nyu-mll/glue (sst2) is not available offline" in line
    assert "python -c \"import datasets; datasets.load_dataset('nyu-mll/glue', 'sst2')\"" in line


def test_from_records_like_a_hub_split():
    rows = [{"premise": "a cat sat", "hypothesis": "an animal sat", "label": 0, "idx": 0},
            {"premise": "a dog ran", "hypothesis": "nothing moved", "label": 2, "idx": 1}]
    ds = td.from_records(rows, ("premise", "hypothesis"), "label", ["Yes", "Maybe", "No"],
                         template=td.MNLI_TEMPLATE, name="mnli")
    assert ds.texts == [("a cat sat", "an animal sat"), ("a dog ran", "nothing moved")]
    np.testing.assert_array_equal(ds.labels, [0, 2])
    assert td.prompt_text(ds, 1, [0]) == ("Premise: a cat sat Hypothesis: an animal sat Output: Yes\n"
                                          "Premise: a dog ran Hypothesis: nothing moved Output:")


# ---------------------------------------------------------------------- local files
def test_shipped_samples_agree_across_formats():
    tsv = sst2_sample()
    csv_ = td.load_local(td.sample_data_path("sentiment_sample.csv"), "review", "sentiment", WORDS)
    jsonl = td.load_local(td.sample_data_path("sentiment_sample.jsonl"), "text", "label", "Negative,Positive")
    assert len(tsv) >= 40 and tsv.n_classes == 2
    assert np.bincount(tsv.labels).tolist() == [24, 24]
    for other in (csv_, jsonl):
        assert other.texts == tsv.texts
        np.testing.assert_array_equal(other.labels, tsv.labels)
        assert other.label_words == WORDS and other.template == td.SST2_TEMPLATE
        assert other.labels.dtype == np.int64
    assert tsv.name == "sst2_sample" and tsv.source.endswith("sst2_sample.tsv")
    assert any('"' in t for t in tsv.texts) and any("é" in t for t in tsv.texts)


def test_labels_as_indices_or_words_and_whitespace(tmp_path):
    p = tmp_path / "mixed.jsonl"
    rows = [{"t": "good\tfun\n film ", "y": "Positive"}, {"t": "bad", "y": "negative"},
            {"t": "fine", "y": 1}, {"t": "awful", "y": "0"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = td.load_local(p, "t", "y", WORDS)
    assert ds.texts == ["good fun film", "bad", "fine", "awful"]
    np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0])
    assert len(td.load_local(p, "t", "y", WORDS, limit=2)) == 2


def test_pair_columns_get_a_template_from_their_names(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("premise,hypothesis,label\na cat sat,an animal sat,0\n", encoding="utf-8")
    ds = td.load_local(p, ["premise", "hypothesis"], "label", ["Yes", "Maybe", "No"])
    assert ds.template.prefixes == ("Premise:", "Hypothesis:")
    assert ds.fields(0) == ("a cat sat", "an animal sat")


@pytest.mark.parametrize("name, content, kwargs, fragments", [
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(text_column="text"),
     ["no column 'text'", "columns: sentence, label"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(label_column="y"), ["no column 'y'", "sentence, label"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n", {}, [":3", "label '2'", "0..1", "Negative, Positive"]),
    ("a.tsv", "sentence\tlabel\nfine\t-1\n", {}, ["label '-1'", "0..1"]),
    ("a.jsonl", '{"sentence": "fine", "label": "Great"}\n', {}, [":1", "label 'Great'", "Negative, Positive"]),
    ("a.jsonl", '{"sentence": "fine", "label": true}\n', {}, ["label True"]),
    ("a.jsonl", '{"sentence": "fine", "label": 1}\n{"sentence": "x"}\n', {}, [":2", "no column 'label'"]),
    ("a.jsonl", '{"sentence": "fine", "label": 1}\n[1, 2]\n', {}, [":2", "JSON object"]),
    ("a.jsonl", '{"sentence": "fine", "label": 1\n', {}, [":1", "not valid JSON"]),
    ("a.tsv", "", {}, ["no rows"]),
    ("a.tsv", "sentence\tlabel\n", {}, ["no rows"]),
    ("a.jsonl", "\n\n", {}, ["no rows"]),
    ("a.csv", "sentence,label\nfine,1,extra\n", {}, [":2", "3 fields", "header has 2"]),
    ("a.csv", "sentence,label\n  ,1\n", {}, [":2", "empty text", "'sentence'"]),
    ("a.txt", "sentence\tlabel\nfine\t1\n", {}, ["'.txt'", ".csv, .tsv, .jsonl"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(label_words=["Only"]), ["at least 2"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(label_words=["A", "A"]), ["'A' is given twice"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(template=td.MNLI_TEMPLATE), ["2 text fields", "1 text column"]),
    ("a.tsv", "sentence\tlabel\nfine\t1\n", dict(limit=0), ["limit"]),
])
def test_bad_local_files_give_one_line_errors(tmp_path, name, content, kwargs, fragments):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    args = dict(text_column="sentence", label_column="label", label_words=WORDS)
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        td.load_local(p, **args)
    one_line_error(e, *fragments)


def test_sample_data_path():
    for name in td.SAMPLE_FILES:
        assert td.sample_data_path(name).is_file()
    with pytest.raises(ValueError) as e:
        td.sample_data_path("nope.tsv")
    one_line_error(e, "'nope.tsv'", "sst2_sample.tsv")


# ---------------------------------------------------------------------- demonstrations
@pytest.mark.parametrize("mode", td.MODES)
def test_demos_depend_only_on_seed_and_example(mode):
    ds = sst2_sample()
    ids = np.arange(12)
    forward = td.sample_demos(ds, ids, 6, mode, seed=7)
    backward = td.sample_demos(ds, ids[::-1], 6, mode, seed=7)
    np.testing.assert_array_equal(forward, backward[::-1])
    for i in (0, 5, 11):
        np.testing.assert_array_equal(td.sample_demos(ds, [i], 6, mode, seed=7)[0], forward[i])
    assert forward.shape == (12, 6) and forward.dtype == np.int64
    for i in ids:
        assert i not in forward[i]
        assert len(set(forward[i])) == 6
    if mode != "similar":
        assert not np.array_equal(forward, td.sample_demos(ds, ids, 6, mode, seed=8))


def test_duplicates_of_the_test_text_are_never_demonstrations():
    ds = td.TextDataset(["same words", "Same  words", "other", "more", "same words"],
                        np.array([0, 1, 0, 1, 1]), WORDS)
    for mode in td.MODES:
        demos = td.sample_demos(ds, [0, 1, 4], 2, mode, seed=3)
        for row in demos:
            assert set(row) == {2, 3}
    with pytest.raises(ValueError) as e:
        td.sample_demos(ds, [0], 3, "random")
    one_line_error(e, "3 demonstrations", "only 2")


@pytest.mark.parametrize("n, expected", [(6, [3, 3]), (4, [2, 2]), (5, None), (1, None)])
def test_balanced_counts(n, expected):
    ds = sst2_sample()
    demos = td.sample_demos(ds, np.arange(20), n, "balanced", seed=1)
    counts = np.stack([np.bincount(ds.labels[row], minlength=2) for row in demos])
    assert (counts.sum(1) == n).all()
    assert (counts.max(1) - counts.min(1) <= 1).all()
    if expected is not None:
        assert (counts == expected).all()
    else:
        assert len({tuple(c) for c in counts}) == 2  # the spare slot goes to either class


def test_balanced_when_a_class_runs_short():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    ds = td.TextDataset([f"text {i}" for i in range(len(labels))], labels, ["a", "b", "c"])
    demos = td.sample_demos(ds, [0, 5], 9, "balanced", seed=0)
    assert np.bincount(labels[demos[0]], minlength=3).tolist() == [1, 4, 4]
    assert np.bincount(labels[demos[1]], minlength=3).tolist() in ([2, 3, 4], [2, 4, 3])


def test_balanced_order_is_shuffled():
    ds = sst2_sample()
    demos = td.sample_demos(ds, np.arange(30), 4, "balanced", seed=0)
    assert len({tuple(ds.labels[row]) for row in demos}) > 2


def test_similar_picks_the_nearest_texts_last():
    texts = ["the acting is wooden and the plot is thin", "the acting is wooden", "sunny beaches",
             "a plot", "cats and dogs", "the plot is thin and silly", "green tea"]
    ds = td.TextDataset(texts, np.array([0, 0, 1, 1, 0, 0, 1]), WORDS)
    demos = td.sample_demos(ds, [0], 3, "similar", seed=0)[0]
    assert demos[-1] in (1, 5) and set(demos[1:]) == {1, 5}
    assert demos[0] == 3
    # a separate pool: indices point into it, and the same row index is allowed
    pool = td.TextDataset(["wooden acting, thin plot", "green tea"], np.array([0, 1]), WORDS)
    np.testing.assert_array_equal(td.sample_demos(ds, [0, 1], 2, "similar", pool=pool), [[1, 0], [1, 0]])


def test_separate_pool():
    ds = sst2_sample()
    pool = td.load_local(td.sample_data_path("sentiment_sample.jsonl"), "text", "label", WORDS, limit=10)
    demos = td.sample_demos(ds, np.arange(len(ds)), 4, "random", seed=0, pool=pool)
    assert demos.max() < 10
    for t in range(10):  # the test text itself is in the pool at the same index and is excluded
        assert t not in demos[t]
    with pytest.raises(ValueError) as e:
        td.sample_demos(ds, [0], 2, pool=td.TextDataset(["x"] * 3, np.array([0, 1, 2]), ["a", "b", "c"]))
    one_line_error(e, "3 classes", "2")


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(mode="nearest"), ["'nearest'", "random, balanced, similar"]),
    (dict(n=-1), ["-1"]),
    (dict(n=48), ["48 demonstrations", "only 47"]),
    (dict(seed=-3), ["seed", "-3"]),
    (dict(test_ids=[48]), ["test id 48", "0..47"]),
    (dict(test_ids=[[0, 1]]), ["1-D"]),
])
def test_bad_sampling_arguments(kwargs, fragments):
    args = dict(test_ids=[0], n=2, mode="random", seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        td.sample_demos(sst2_sample(), **args)
    one_line_error(e, *fragments)


# ---------------------------------------------------------------------- prompts
def check_example(tokenizer, ds, t, demo_idx, ex, *, pool=None, skip_special=False):
    """Every recorded position against the decoded text."""
    pool = ds if pool is None else pool
    text = td.prompt_text(ds, t, demo_idx, pool=pool)
    ids = ex.input_ids
    assert tokenizer.decode(ids, skip_special_tokens=skip_special) == text
    assert text.endswith(" Output:")
    lt = td.label_tokens(tokenizer, ds.label_words)
    np.testing.assert_array_equal(ex.demo_labels, pool.labels[demo_idx])
    np.testing.assert_array_equal(ex.label_pos, ex.spans[:, 1] - 1)
    np.testing.assert_array_equal(ids[ex.label_pos], lt[ex.demo_labels])
    assert ex.gold == ds.labels[t]
    for i, (start, end) in zip(demo_idx, ex.spans):
        word = pool.label_words[pool.labels[i]]
        # (a SentencePiece decoder drops the leading space of a lone piece)
        first = tokenizer.decode(ids[end - 1:end]).lstrip()
        assert first and word.startswith(first)
        assert tokenizer.decode(ids[start:end]).lstrip().startswith(pool.fields(i)[0])
        # the tokens before x are its line's prefix, right after the previous line
        assert tokenizer.decode(ids[:start], skip_special_tokens=skip_special).endswith(pool.template.prefixes[0])


@pytest.mark.parametrize("mode", td.MODES)
def test_label_positions_against_the_text(mode):
    tok = train_tokenizer()
    ds = sst2_sample()
    demos = td.sample_demos(ds, np.arange(8), 5, mode, seed=2)
    examples = td.build_prompts(tok, ds, np.arange(8), 5, mode, seed=2)
    for t, (d, ex) in enumerate(zip(demos, examples)):
        check_example(tok, ds, t, d, ex)
        # byte-level BPE splits at the segment boundaries anyway: the same tokens as the whole string
        assert tok.encode(td.prompt_text(ds, t, d)) == ex.input_ids.tolist()
    # return_demos hands back the demonstrations each prompt was built from
    again, used = td.build_prompts(tok, ds, np.arange(8), 5, mode, seed=2, return_demos=True)
    np.testing.assert_array_equal(used, demos)
    assert [e.input_ids.tolist() for e in again] == [e.input_ids.tolist() for e in examples]


def test_llama2_style_tokenizer():
    """Prefix-space tokenizers: BOS in front, no spurious spaces between segments."""
    tok = train_llama2_style_tokenizer()
    ds = sst2_sample()
    demos = td.sample_demos(ds, np.arange(6), 4, "balanced", seed=0)
    for t, d in enumerate(demos):
        ex = td.build_example(tok, ds, t, d)
        assert ex.input_ids[0] == tok.bos_token_id
        check_example(tok, ds, t, d, ex, skip_special=True)
        assert tok.encode(td.prompt_text(ds, t, d)) == ex.input_ids.tolist()


def test_pair_task_prompt():
    tok = train_tokenizer()
    rows = [{"p": f"the film number {i} was shown", "h": f"a film was {'shown' if i % 3 == 0 else 'lost'}",
             "y": i % 3} for i in range(9)]
    ds = td.from_records(rows, ("p", "h"), "y", ["Yes", "Maybe", "No"], template=td.MNLI_TEMPLATE)
    d = td.sample_demos(ds, [4], 3, "balanced", seed=0)[0]
    assert sorted(ds.labels[d]) == [0, 1, 2]
    ex = td.build_example(tok, ds, 4, d)
    check_example(tok, ds, 4, d, ex)
    text = tok.decode(ex.input_ids)
    assert text.count("Hypothesis:") == 4 and text.endswith("Hypothesis: a film was lost Output:")


def test_multi_token_label_words_are_scored_on_their_first_token():
    tok = train_tokenizer()
    words = ["Negatively", "Positively-minded"]
    assert all(len(tok.encode(" " + w)) > 1 for w in words)
    ds = td.load_local(td.sample_data_path("sst2_sample.tsv"), "sentence", "label", words)
    lt = td.label_tokens(tok, words)
    np.testing.assert_array_equal(lt, [tok.encode(" " + w)[0] for w in words])
    (ex,) = td.build_prompts(tok, ds, [3], 4, "random", seed=0)
    d = td.sample_demos(ds, [3], 4, "random", seed=0)[0]
    check_example(tok, ds, 3, d, ex)
    for pos, y in zip(ex.label_pos, ex.demo_labels):
        rest = tok.decode(ex.input_ids[pos:pos + len(tok.encode(" " + words[y]))])
        assert rest == " " + words[y]
    assert ex.spans[1:, 0].min() > ex.label_pos[0] + 1  # the word's other tokens follow the span


def test_label_words_sharing_a_first_token_are_refused():
    tok = train_tokenizer()
    words = ["Positive", "Positively"]
    assert tok.encode(" Positively")[0] == tok.encode(" Positive")[0]
    with pytest.raises(ValueError) as e:
        td.label_tokens(tok, words)
    one_line_error(e, "'Positive'", "'Positively'", "first token")
    ds = td.TextDataset(["a", "b", "c"], np.array([0, 1, 0]), words)
    with pytest.raises(ValueError):
        td.build_prompts(tok, ds, [0], 2)


def test_truncation_and_max_length():
    tok = train_tokenizer()
    ds = sst2_sample()
    d = td.sample_demos(ds, [0], 6, "random", seed=0)[0]
    full = td.build_example(tok, ds, 0, d)
    cut = td.build_example(tok, ds, 0, d, max_text_tokens=3)
    assert len(cut.input_ids) < len(full.input_ids)
    out_len = len(tok.encode(" Output:"))
    np.testing.assert_array_equal(cut.spans[:, 1] - cut.spans[:, 0], 3 + out_len + 1)
    lt = td.label_tokens(tok, WORDS)
    np.testing.assert_array_equal(cut.input_ids[cut.label_pos], lt[cut.demo_labels])
    assert td.build_example(tok, ds, 0, d, max_length=len(full.input_ids)).input_ids.size == full.input_ids.size
    with pytest.raises(ValueError) as e:
        td.build_prompts(tok, ds, [0], 6, seed=0, max_length=len(full.input_ids) - 1)
    one_line_error(e, f"{len(full.input_ids)} tokens", f"max_length={len(full.input_ids) - 1}", "max_text_tokens")
    with pytest.raises(ValueError) as e:
        td.build_prompts(tok, ds, [0], 6, max_text_tokens=0)
    one_line_error(e, "max_text_tokens", "0")


def test_zero_demonstrations_is_the_standalone_prompt():
    tok = train_tokenizer()
    ds = sst2_sample()
    ex = td.build_example(tok, ds, 7, [])
    assert ex.spans.shape == (0, 2) and ex.label_pos.shape == (0,)
    assert tok.decode(ex.input_ids) == f"Input: {ds.texts[7]} Output:"


def test_prompts_collate_into_a_batch():
    tok = train_tokenizer()
    ds = sst2_sample()
    examples = td.build_prompts(tok, ds, [0, 1, 2], 4, "balanced", seed=0)
    lt = td.label_tokens(tok, ds.label_words)
    batch = collate(examples, lt, pad_id=tok.pad_token_id)
    rows = np.arange(3)[:, None]
    np.testing.assert_array_equal(batch.input_ids[rows, batch.label_pos], lt[batch.demo_labels])
    np.testing.assert_array_equal(batch.gold, ds.labels[:3])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 10), mode=st.sampled_from(td.MODES),
       t=st.integers(0, 47), cap=st.sampled_from([None, 1, 4]))
def test_spans_are_well_formed(seed, n, mode, t, cap):
    tok = train_tokenizer()
    ds = sst2_sample()
    (ex,) = td.build_prompts(tok, ds, [t], n, mode, seed, max_text_tokens=cap)
    T = ex.input_ids.size
    assert ex.spans.shape == (n, 2) and ex.label_pos.shape == (n,) and ex.demo_labels.shape == (n,)
    if n:
        assert (0 <= ex.spans[:, 0]).all() and (ex.spans[:, 0] < ex.spans[:, 1]).all()
        assert (ex.spans[:, 1] <= T - 1).all()
        assert (ex.spans[1:, 0] >= ex.spans[:-1, 1]).all()
        np.testing.assert_array_equal(ex.label_pos, ex.spans[:, 1] - 1)
        np.testing.assert_array_equal(ex.input_ids[ex.label_pos], td.label_tokens(tok, WORDS)[ex.demo_labels])
    assert tok.decode(ex.input_ids).endswith(" Output:")
    assert ex.gold == ds.labels[t]


# ---------------------------------------------------------------------- the tiny model folder
def test_tiny_llm_dir_loads_offline(tiny_llm_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert model.config.model_type == "gptj" and model.config.vocab_size == len(tok)
    (ex,) = td.build_prompts(tok, sst2_sample(), [0], 4, "balanced", seed=0)
    assert tok.encode(tok.decode(ex.input_ids)) == ex.input_ids.tolist()
    with torch.no_grad():
        logits = model(torch.as_tensor(ex.input_ids)[None]).logits
    assert logits.shape == (1, ex.input_ids.size, len(tok))
