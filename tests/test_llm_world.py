"""Real LLMs on simulator worlds (``render``, ``llm_world``), offline on CPU.

A tiny random GPT-J with a locally trained tokenizer (tests/llm_helpers.py) runs the whole
measurement end to end; a stub LM whose logits are set by hand to the exact Bayes predictive
checks that every distance to Bayes is then 0; the per-position Bayes loss is checked against
a brute-force sum over hidden paths.  Nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from conftest import brute_prob, worlds  # noqa: E402
from llm_helpers import flip_in_member, save_tiny_gptj, train_tokenizer  # noqa: E402

from simkernel import bayes, hf, llm_world, presets, render  # noqa: E402
from simkernel.cache import CacheUnreadable, cache_key  # noqa: E402
from simkernel.alignment import examples_from_prompts  # noqa: E402
from simkernel.sampling import sample_prompts  # noqa: E402

SMALL = dict(n_demos=(0, 1, 2), n_prompts=12, example_length=3, n_docs=3, doc_length=12)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


def header(path):
    with open(path, newline="") as f:
        return tuple(next(csv.reader(f)))


# ---------------------------------------------------------------------- rendering
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(V=st.integers(2, 60), delimiter=st.integers(0, 59), seed=st.integers(0, 3))
def test_symbol_map_is_a_bijection_onto_single_tokens_and_survives_save_load(tok, tmp_path_factory, V, delimiter,
                                                                              seed):
    world = presets.make_world("random", seed, n_symbols=V, delimiter=delimiter % V, n_states=2, n_concepts=2)
    smap = render.choose_symbols(tok, world)
    assert len(set(smap.token_ids.tolist())) == V == len(set(smap.strings))
    for s, i in zip(smap.strings, smap.token_ids):
        assert tok.encode(s, add_special_tokens=False) == [int(i)]
    assert smap.strings[world.delimiter] == "\n"
    # the same tokenizer and world always give the same mapping
    assert render.choose_symbols(tok, world) == smap
    path = tmp_path_factory.mktemp("smap") / "symbols.json"
    smap.save(path)
    back = render.SymbolMap.load(path)
    assert back == smap and np.array_equal(back.token_ids, smap.token_ids)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 50), n=st.integers(0, 5), k=st.integers(2, 4))
def test_rendered_prompts_hold_the_label_tokens_at_the_recorded_positions(tok, seed, n, k):
    world = presets.make_world("random", seed % 4, n_labels=3)
    smap = render.choose_symbols(tok, world)
    prompts = sample_prompts(world, 4, n, k, seed=seed)
    batch = render.render_prompts(smap, world, prompts)
    assert np.array_equal(batch.label_tokens, smap.token_ids[world.labels])
    rows = np.arange(len(batch))[:, None]
    # the token at each recorded label position is that demonstration's label token
    assert np.array_equal(batch.input_ids[rows, batch.label_pos], batch.label_tokens[batch.demo_labels])
    assert np.array_equal(batch.spans[:, :, 1] - 1, batch.label_pos)
    for b in range(len(batch)):
        ids = batch.input_ids[b][batch.attention_mask[b] == 1]
        # the text a user would type tokenizes to exactly these ids
        assert tok.encode(smap.text(prompts.tokens[b]), add_special_tokens=False) == ids.tolist()
        assert np.array_equal(ids, smap.ids(prompts.tokens[b]))


def test_render_batch_puts_a_bos_prefix_inside_the_padding():
    world = presets.make_world("random", 0)
    prompts = sample_prompts(world, 3, 2, 3, seed=0)
    from simkernel.prompts import collate

    sym = collate(examples_from_prompts(world, prompts), world.labels)
    base = render.SymbolMap(tuple(f" s{v}" for v in range(world.n_symbols)), np.arange(world.n_symbols) + 10,
                            np.array([1]), 0, world.delimiter, world.labels, {"name": "t"})
    sym = sym.subset([0, 1, 2])
    out = render.render_batch(base, sym)
    assert out.input_ids.shape[1] == sym.input_ids.shape[1] + 1
    first = np.argmax(out.attention_mask, 1)
    assert (out.input_ids[np.arange(3), first] == 1).all()
    assert np.array_equal(out.input_ids[np.arange(3)[:, None], out.label_pos], out.label_tokens[out.demo_labels])


def test_bad_symbols_are_one_line_errors(tok):
    world = presets.make_world("random", 0, n_symbols=4, n_labels=0)      # labels 1, 2, 3 (delimiter 0)
    ok = ["\n", " the", " and", " to"]
    assert render.choose_symbols(tok, world, ok).strings == tuple(ok)
    for bad, words in ((["\n", " the", " the", " to"], "cannot separate"),
                       (["\n", " the", " and", " xylophone"], "one token"),
                       (["\n", " the"], "one per symbol")):
        with pytest.raises(ValueError, match=words) as e:
            render.choose_symbols(tok, world, bad)
        assert "\n" not in str(e.value).replace("'\\n'", "")
    with pytest.raises(ValueError, match=r"offers only \d+ one-token strings"):
        render.choose_symbols(tok, presets.make_world("random", 0, n_symbols=400, n_states=2))


# ---------------------------------------------------------------------- exact Bayes, by hand
class BayesStub(torch.nn.Module):
    """A causal LM whose logits put log P_Bayes(next symbol | the symbols so far) on the rendered
    symbol tokens (and -60 elsewhere): the exact Bayesian predictor, written as an LM."""

    def __init__(self, world, smap, vocab):
        super().__init__()
        self.world, self.smap, self.vocab = world, smap, vocab
        self.inverse = {int(t): v for v, t in enumerate(smap.token_ids)}

    def _logits(self, symbols):
        p = bayes.posterior_predictive(self.world, np.asarray(symbols, dtype=np.int64)[None])[0]
        out = torch.full((self.vocab,), -60.0, dtype=torch.float64)
        out[torch.as_tensor(self.smap.token_ids)] = torch.as_tensor(np.log(np.maximum(p, 1e-300)))
        return out

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        ids = input_ids.numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.numpy()
        rows = []
        for r, m in zip(ids, mask):
            sym = [self.inverse[int(t)] for t in r[m == 1]]
            if logits_to_keep == 1:
                rows.append(self._logits(sym)[None])
            else:
                rows.append(torch.stack([self._logits(sym[:t + 1]) for t in range(len(sym))]))
        return types.SimpleNamespace(logits=torch.stack(rows))


@pytest.mark.parametrize("preset,seed", [("random", 0), ("ginc-small", 1)])
def test_an_lm_that_is_exact_bayes_scores_zero_distance_and_full_agreement(tok, preset, seed):
    world = presets.make_world(preset, seed)
    stub = BayesStub(world, render.choose_symbols(tok, world), len(tok))
    res = llm_world.evaluate(stub, tok, [world], inside=False, **SMALL)
    got = {(r["n_demos"], r["metric"]): r for r in res.icl}
    for n in SMALL["n_demos"]:
        assert abs(got[(n, "tv_bayes")]["mean"]) < 1e-6
        assert abs(got[(n, "tv_bayes_symbols")]["mean"]) < 1e-6
        assert got[(n, "agree_bayes")]["mean"] == pytest.approx(1.0)
        assert got[(n, "acc_model")]["mean"] == pytest.approx(got[(n, "acc_bayes")]["mean"])
        assert got[(n, "symbol_mass")]["mean"] == pytest.approx(1.0)
    gaps = [r for r in res.documents if r["metric"] == "gap"]
    assert len(gaps) == SMALL["doc_length"] - 1
    assert max(abs(r["mean"]) for r in gaps) < 1e-6
    assert abs(res.worlds[0]["gap"]) < 1e-6
    assert res.inside is None


# ---------------------------------------------------------------------- the per-position Bayes loss
@settings(max_examples=30, deadline=None)
@given(world=worlds(max_concepts=2, max_states=3, max_symbols=3, allow_zeros=False), seed=st.integers(0, 99))
def test_document_losses_match_a_brute_force_sum_over_hidden_paths(world, seed):
    from simkernel.sampling import sample_corpus

    L = 5
    corpus = sample_corpus(world, 2, L, seed=seed)
    tokens = corpus.tokens.reshape(2, L).astype(np.int64)
    mix = bayes.block_loss(world, tokens, np.zeros(2, dtype=np.int64))
    own = llm_world.oracle_loss(world, tokens, corpus.concepts)
    both = bayes.document_loss(world, tokens, corpus.concepts)
    np.testing.assert_array_equal(both[0], mix)
    np.testing.assert_array_equal(both[1], own)
    for d in range(2):
        for t in range(1, L):
            def mixture(m):
                return sum(world.prior[k] * brute_prob(world, k, tokens[d, :m]) for k in range(world.n_concepts))
            assert mix[d, t - 1] == pytest.approx(-np.log(mixture(t + 1) / mixture(t)), rel=1e-9, abs=1e-9)
            c = int(corpus.concepts[d])
            want = -np.log(brute_prob(world, c, tokens[d, :t + 1]) / brute_prob(world, c, tokens[d, :t]))
            assert own[d, t - 1] == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(world=worlds(max_concepts=3, max_states=4))
def test_mixing_rates_lie_in_0_1_and_vanish_for_one_state(world):
    r = llm_world.mixing_rates(world)
    assert r.shape == (world.n_concepts,) and ((r >= 0) & (r <= 1)).all()
    if world.n_states == 1:
        assert (r == 0).all()


# ---------------------------------------------------------------------- end to end, cache
def test_tiny_gptj_end_to_end_then_from_the_cache(tiny_llm_dir, tmp_path, monkeypatch):
    cache = tmp_path / "run"
    kw = dict(preset="random", world_seeds=(0, 1), device="cpu", cache_dir=cache, **SMALL)
    res = llm_world.run(str(tiny_llm_dir), **kw)
    written = res.write(cache)
    names = {p.name for p in written}
    assert set(llm_world.FILES) <= names
    assert header(cache / "icl_vs_bayes.csv") == llm_world.ICL_TABLE_COLUMNS
    assert header(cache / "documents.csv") == llm_world.DOC_COLUMNS
    assert header(cache / "worlds.csv") == llm_world.WORLD_COLUMNS
    for w in ("random-0", "random-1"):
        assert (cache / "inside" / w / "heads.csv").is_file()
    assert (cache / "inside" / "pooled.csv").is_file()
    meta = json.loads((cache / "icl_vs_bayes.json").read_text())
    assert meta["seed"] == 0 and {"numpy", "torch", "transformers"} <= set(meta["versions"])
    sym = meta["worlds"]["random-0"]["symbols"]
    assert render.SymbolMap.from_dict(sym).strings[0] == "\n"
    assert meta["cache"]["model_loaded"] is True and meta["cache"]["hits"] == [False, False]
    # the cache file is named by cache.cache_key over the model, the world and the prompt settings
    ns = list(SMALL["n_demos"])
    spec = llm_world.load_worlds("random", (0,))[0]
    data = llm_world.data_identity(spec, ns=ns, example_length=3, concepts="prior", n_docs=SMALL["n_docs"],
                                   doc_length=SMALL["doc_length"], symbols=None, inside=True)
    key = cache_key(hf.model_identity(hf.resolve_model(str(tiny_llm_dir))), data, n_demos=max(ns),
                        mode="world", seed=0, n_examples=SMALL["n_prompts"], dtype="float32", probe_layers="auto",
                        offsets=llm_world.probe_offsets(3))
    assert (cache / f"outputs-{key}.npz").is_file()
    assert len(list(cache.glob("outputs-*.npz"))) == 2
    lines = res.summary_lines()
    assert any("TV over all symbols" in line for line in lines)

    def no_model(*a, **k):
        raise AssertionError("a cached run must not load anything of the model")

    monkeypatch.setattr(hf, "load_model", no_model)
    monkeypatch.setattr(hf, "load_tokenizer", no_model)
    again = llm_world.run(str(tiny_llm_dir), **kw)
    assert again.meta["cache"]["hits"] == [True, True]
    assert json.dumps(again.icl) == json.dumps(res.icl)
    assert json.dumps(again.documents) == json.dumps(res.documents)
    assert json.dumps(again.inside.pooled) == json.dumps(res.inside.pooled)
    assert again.meta["cache"]["damaged"] == [None, None]

    # a changed byte inside world random-1's cached arrays: that world is recomputed (the model
    # loaded again), its file replaced, the run says so, and every number is the first run's
    monkeypatch.undo()
    spec1 = llm_world.load_worlds("random", (1,))[0]
    key1 = cache_key(hf.model_identity(hf.resolve_model(str(tiny_llm_dir))),
                         llm_world.data_identity(spec1, ns=ns, example_length=3, concepts="prior",
                                                 n_docs=SMALL["n_docs"], doc_length=SMALL["doc_length"],
                                                 symbols=None, inside=True),
                         n_demos=max(ns), mode="world", seed=0, n_examples=SMALL["n_prompts"], dtype="float32",
                         probe_layers="auto", offsets=llm_world.probe_offsets(3))
    damaged = cache / f"outputs-{key1}.npz"
    flip_in_member(damaged, "doc_logp.npy")
    with pytest.raises(CacheUnreadable):
        llm_world.load_world_outputs(damaged)
    third = llm_world.run(str(tiny_llm_dir), **kw)
    why = "BadZipFile: Bad CRC-32 for file 'doc_logp.npy'"
    assert third.meta["cache"]["hits"] == [True, False] and third.meta["cache"]["model_loaded"] is True
    assert third.meta["cache"]["damaged"] == [None, why]
    assert third.meta["worlds"]["random-1"]["cache"] == f"recomputed ({damaged.name})"
    assert f"world random-1: the cache file {damaged.name} could not be read ({why}): recomputed" in \
        third.summary_lines()
    assert json.dumps(third.icl) == json.dumps(res.icl)
    assert json.dumps(third.documents) == json.dumps(res.documents)
    assert json.dumps(third.inside.pooled) == json.dumps(res.inside.pooled)
    assert llm_world.run(str(tiny_llm_dir), **kw).meta["cache"]["hits"] == [True, True]      # replaced, readable



def test_bad_input_fails_before_any_weights_load_and_writes_nothing(tiny_llm_dir, tmp_path, monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the arguments were checked")

    monkeypatch.setattr(hf, "load_model", no_weights)
    cache = tmp_path / "cache"
    cases = [
        (dict(preset="random", overrides={"n_symbols": 400, "n_states": 2}), "offers only"),
        (dict(preset="random", symbols=["\n", " the", " the"] + [f" {w}" for w in render.COMMON_WORDS[2:11]]),
         "cannot separate"),
        (dict(preset="random", n_demos=(0, 300)), r"longer than the model's context \(1024\); allowed: n_demos <="),
        (dict(preset="random", doc_length=2000), "doc_length"),
        (dict(preset="random", n_demos=(-1,)), "n_demos"),
        (dict(preset="nope"), "unknown preset"),
    ]
    for kw, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            llm_world.run(str(tiny_llm_dir), device="cpu", cache_dir=cache, **{**SMALL, **kw})
        assert "\n" not in str(e.value)
        assert not cache.exists()
    bare = save_tiny_gptj(tmp_path / "no-tokenizer", train_tokenizer())
    with pytest.raises(ValueError, match="has no tokenizer"):
        llm_world.run(str(bare), preset="random", device="cpu", cache_dir=cache, **SMALL)
    assert not cache.exists()
