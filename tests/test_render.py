"""Simulator worlds as text for any tokenizer (``render``): Llama-style SentencePiece tokenizers,
offline on CPU.

Two SentencePiece tokenizers are built locally (tests/llm_helpers.py): transformers' own
``LlamaTokenizer`` (Metaspace "▁" put in front of the text, merged into a leading space: " the"
-> "▁the" but "\\n" -> "▁", newline) over a vocabulary trained on generated words, and a
Llama-2-style one whose normaliser adds its own "▁" (" the" -> "▁", "▁the").  For both, the
rendered text must tokenize back to exactly the ids used, whatever symbol comes first; a tiny
random ``LlamaForCausalLM`` runs ``simkernel llm --preset random`` end to end.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("torch")

from cli_helpers import run  # noqa: E402
from llm_helpers import (make_tiny_llama_dir, train_llama2_style_tokenizer, train_llama_tokenizer,  # noqa: E402
                         train_tokenizer)

from simkernel import llm_world, presets, render  # noqa: E402
from simkernel.sampling import sample_corpus, sample_prompts  # noqa: E402

SP_TOKENIZERS = {"llama": train_llama_tokenizer, "llama2-style": train_llama2_style_tokenizer}


@pytest.fixture(scope="module", params=sorted(SP_TOKENIZERS))
def sp_tok(request):
    return SP_TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"))


def one_error_line(r, *words):
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    for w in words:
        assert w in err[0], err[0]


def marker_id(tok):
    return tok.convert_tokens_to_ids("▁")


def assert_round_trip(tok, smap, tokens):
    """The text of ``tokens`` encodes (BOS included) to exactly the rendered ids."""
    tokens = np.asarray(tokens, dtype=np.int64)
    assert tok.encode(smap.text(tokens)) == smap.ids(tokens).tolist(), smap.text(tokens)


# ---------------------------------------------------------------------- the symbol map
@pytest.mark.parametrize("preset, seed, overrides", [
    ("random", 0, {}), ("random", 1, {"n_symbols": 30, "delimiter": 7}), ("random", 2, {"n_symbols": 5}),
    ("random", 3, {"n_symbols": 60, "delimiter": 59, "n_labels": 4}), ("ginc-small", 0, {})])
def test_sentencepiece_round_trip_on_several_worlds(sp_tok, preset, seed, overrides):
    tok = sp_tok
    world = presets.make_world(preset, seed, **overrides)
    smap = render.choose_symbols(tok, world)
    V, d = world.n_symbols, world.delimiter
    assert smap.strings[d] == "\n" and len(set(smap.token_ids.tolist())) == V == len(set(smap.strings))
    # the prefix: the BOS, then the lone "▁" every text starts with (whatever its first symbol)
    assert smap.prefix_ids.tolist() == [tok.bos_token_id, marker_id(tok)]
    for v, i in enumerate(smap.token_ids):
        if v == d:
            assert tok.decode([int(i)]) == "\n"
        else:
            assert tok.convert_ids_to_tokens(int(i)) == "▁" + smap.strings[v][1:]
    assert render.choose_symbols(tok, world) == smap
    assert render.SymbolMap.from_dict(json.loads(json.dumps(smap.to_dict()))) == smap
    # prompts: the text a user would type tokenizes to exactly the ids the model reads
    prompts = sample_prompts(world, 6, 3, 3, seed=seed)
    batch = render.render_prompts(smap, world, prompts)
    rows = np.arange(len(batch))[:, None]
    assert np.array_equal(batch.input_ids[rows, batch.label_pos], batch.label_tokens[batch.demo_labels])
    for b in range(len(batch)):
        ids = batch.input_ids[b][batch.attention_mask[b] == 1]
        assert tok.encode(smap.text(prompts.tokens[b])) == ids.tolist()
    # documents, and texts that start with the delimiter or hold it twice in a row
    docs = sample_corpus(world, 3, 40, seed=seed).tokens.reshape(3, 40)
    for doc, ids in zip(docs, render.render_documents(smap, docs)):
        assert tok.encode(smap.text(doc)) == ids.tolist()
    other = (d + 1) % V
    for tokens in ([d], [other], [d, other, d], [d, d, other], [other, d, d], list(range(V)) * 2):
        assert_round_trip(tok, smap, tokens)


def test_the_lead_is_found_for_either_kind_of_sentencepiece():
    llama, legacy = train_llama_tokenizer(), train_llama2_style_tokenizer()
    # transformers' Metaspace merges a leading space into its marker: the text starts with one
    # more space, so a first word and a first newline both come after a lone "▁"
    assert llama.encode(" the", add_special_tokens=False) == [llama.convert_tokens_to_ids("▁the")]
    lead = render.text_lead(llama)
    assert lead == render.Lead(" ", (marker_id(llama),), llama.convert_tokens_to_ids("<0x0A>"))
    # Llama-2's normaliser adds its own "▁" to every text: nothing to write in front
    lead2 = render.text_lead(legacy)
    assert lead2 == render.Lead("", (marker_id(legacy),), legacy.convert_tokens_to_ids("\n"))
    world = presets.make_world("random", 0)
    assert render.choose_symbols(llama, world).text([1, 0, 2]).startswith("  ")
    assert render.choose_symbols(legacy, world).text([1, 0, 2]).startswith(" ")
    assert render.word_marker(llama, lead) == "▁"


def test_a_byte_level_mapping_is_unchanged():
    tok = train_tokenizer()
    assert render.text_lead(tok) == render.Lead("", (), tok.encode("\n")[0])
    assert render.word_marker(tok) == "Ġ"
    smap = render.choose_symbols(tok, presets.make_world("random", 0))
    d = smap.to_dict()
    assert "lead" not in d and d["prefix_ids"] == [] and smap.lead == ""
    assert smap.text([1, 0, 2]) == smap.strings[1] + "\n" + smap.strings[2]


def test_words_past_the_common_ones_come_from_the_word_boundary_marker():
    tok = train_llama_tokenizer()
    # the lone pieces decode without their space, so only the "▁word" entries can offer these
    assert tok.decode([tok.convert_tokens_to_ids("▁bado")]) == "bado"
    world = presets.make_world("random", 0, n_symbols=220, n_states=2, n_concepts=2)
    smap = render.choose_symbols(tok, world)
    extra = [s for s in smap.strings if s != "\n" and s[1:] not in render.COMMON_WORDS]
    assert extra, "every word came from COMMON_WORDS"
    ids = [tok.convert_tokens_to_ids("▁" + s[1:]) for s in extra]
    assert ids == sorted(ids)                                           # the vocabulary's order
    assert_round_trip(tok, smap, np.arange(world.n_symbols))


def test_given_symbols_with_a_sentencepiece_tokenizer(sp_tok):
    world = presets.make_world("random", 0, n_symbols=4, n_labels=0)
    ok = ["\n", " the", " and", " to"]
    smap = render.choose_symbols(sp_tok, world, ok)
    assert smap.strings == tuple(ok) and smap.prefix_ids.size == 2
    assert_round_trip(sp_tok, smap, [0, 1, 0, 2, 3])
    for bad, words in ((["\n", " the", " the", " to"], "cannot separate"),
                       (["\n", " the", " and", " xylophone"], "one token")):
        with pytest.raises(ValueError, match=words) as e:
            render.choose_symbols(sp_tok, world, bad)
        assert "\n" not in str(e.value).replace("'\\n'", "")


def test_a_text_that_does_not_give_the_ids_is_refused(sp_tok):
    world = presets.make_world("random", 0)
    smap = render.choose_symbols(sp_tok, world)
    wrong = render.SymbolMap(smap.strings, smap.token_ids, smap.prefix_ids[:1], smap.pad_id, smap.delimiter,
                             smap.labels, smap.tokenizer, smap.lead)      # without the lone "▁"
    with pytest.raises(ValueError, match="encodes the rendered text") as e:
        render.check_round_trip(sp_tok, wrong, [1, 0, 2])
    assert "\n" not in str(e.value).replace("\\n", "")
    render.check_round_trip(sp_tok, smap, [1, 0, 2])


def test_too_few_one_token_words_is_one_line_error():
    tok = train_llama_tokenizer(300)                  # hardly any whole words: 11 "▁word" pieces
    small = presets.make_world("random", 0, n_symbols=12)
    assert render.choose_symbols(tok, small).n_symbols == 12
    with pytest.raises(ValueError, match=r"has 20 symbols but tokenizer .* offers only 12 one-token strings "
                                         r"\(a newline and 11 words\).*at most 12 symbols") as e:
        render.choose_symbols(tok, presets.make_world("random", 0, n_symbols=20))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- a tiny Llama, end to end
def test_tiny_llama_end_to_end_through_the_cli(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    r = run(["llm", "--model", tiny_llama_dir, "--preset", "random", "--n-demos", "0,1,2", "--device", "cpu",
             "--out", out])
    assert r.exit_code == 0, r.output + r.stderr
    with open(out / "icl_vs_bayes.csv", newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == llm_world.ICL_TABLE_COLUMNS and len(table) > 1
    meta = json.loads((out / "icl_vs_bayes.json").read_text())
    (world,) = meta["worlds"].values()
    smap = render.SymbolMap.from_dict(world["symbols"])
    tok = train_llama_tokenizer()
    assert smap.prefix_ids.tolist() == [tok.bos_token_id, marker_id(tok)] and smap.lead == " "
    ids = tok.encode(world["example_prompt"])
    assert ids[:2] == smap.prefix_ids.tolist() and set(ids[2:]) <= set(smap.token_ids.tolist())
    assert (out / "documents.csv").is_file() and (out / "inside" / "heads.csv").is_file()


def test_a_tokenizer_with_too_few_words_stops_the_cli_with_one_line(tmp_path):
    folder = make_tiny_llama_dir(tmp_path / "tiny-vocab", vocab_size=300)
    out = tmp_path / "run"
    r = run(["llm", "--model", folder, "--preset", "random", "--set", "n_symbols=20", "--n-demos", "0,1",
             "--device", "cpu", "--out", out])
    assert r.exit_code != 0
    one_error_line(r, "offers only 12 one-token strings", "at most 12 symbols")
    assert not out.exists()
