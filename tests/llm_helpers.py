"""Offline stand-ins for a real LLM: tokenizers trained on the shipped sample texts and a tiny
randomly initialised GPT-J, saved with ``save_pretrained`` so that
``AutoTokenizer.from_pretrained(folder)`` and ``AutoModelForCausalLM.from_pretrained(folder)``
load them exactly like a downloaded model.

- ``train_tokenizer()``: byte-level BPE (GPT-2/GPT-J style: no BOS, leading spaces belong to
  the next word), wrapped as a ``PreTrainedTokenizerFast``.
- ``train_llama2_style_tokenizer()``: SentencePiece/Llama-2 style (a "▁" put before every
  input and for each space, a BOS token added in front), to test tokenizers of that kind.
- ``train_llama_tokenizer()``: a Llama tokenizer as transformers builds it (``LlamaTokenizer``:
  BPE with byte fallback, a Metaspace pre-tokenizer that puts "▁" in front of the text, ``<s>``
  added) over a vocabulary trained on a few hundred generated words.
- ``save_tiny_gptj(folder, tokenizer)``: 2 layers, n_embd 32, 4 heads, rotary_dim 8.
- ``save_tiny_llama(folder, tokenizer)``: a ``LlamaForCausalLM``, 2 layers, hidden size 32.
- ``make_tiny_llm_dir(folder)``: the byte-level tokenizer and the GPT-J, in one folder (the
  ``tiny_llm_dir`` fixture); ``make_tiny_llama_dir(folder)``: the Llama tokenizer and model.

Training is deterministic (the same texts and settings give the same vocabulary), and the
model's weights come from ``torch.manual_seed(seed)`` inside a forked RNG.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from simkernel import textdata

EOS = "<|endoftext|>"


def sample_texts() -> list[str]:
    """The shipped sample sentences and prompt lines built from them (so that the template
    words and every task's label words become tokens, as they are in a real vocabulary)."""
    ds = textdata.load_local(textdata.sample_data_path("sentiment_sample.jsonl"), "text", "label",
                             ["Negative", "Positive"])
    words = sorted({w for t in textdata.TASKS.values() for w in t.label_words})
    lines = [textdata.prompt_text(ds, i, [(i + 1) % len(ds), (i + 2) % len(ds)]) for i in range(len(ds))]
    return list(ds.texts) + lines + [" ".join(f"Premise: a Hypothesis: b Output: {w}" for w in words)] * 20


def _bpe_trainer(vocab_size: int, special: list[str], alphabet):
    from tokenizers import trainers

    return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special,
                               initial_alphabet=alphabet, show_progress=False)


@lru_cache(maxsize=None)
def train_tokenizer(vocab_size: int = 600):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (EOS = BOS = PAD = ``<|endoftext|>``, none
    added to inputs), like GPT-J's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sample_texts(), _bpe_trainer(vocab_size, [EOS], pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   clean_up_tokenization_spaces=False)


@lru_cache(maxsize=None)
def train_llama2_style_tokenizer(vocab_size: int = 600):
    """A SentencePiece-style BPE ``PreTrainedTokenizerFast`` shaped like Llama-2's: a "▁" is put
    in front of every input and replaces each space, newlines are pieces of their own, ``<s>``
    is added in front of each encoded text, and decoding drops the one leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = sample_texts()
    alphabet = sorted({c for t in texts for c in t} | {"▁"})
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # sentencepiece never merges across a word start or a newline; splitting there reproduces that
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(texts, _bpe_trainer(vocab_size, ["<unk>", "<s>", "</s>"], alphabet))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", clean_up_tokenization_spaces=False)


def generated_words(n: int = 300) -> list[str]:
    """``n`` distinct lowercase words: render.COMMON_WORDS first, then consonant-vowel
    syllable pairs ("bado", "bade", ...), a fixed list."""
    from itertools import product

    from simkernel.render import COMMON_WORDS

    words = list(dict.fromkeys(COMMON_WORDS))
    made = ("".join(p) for p in product("bdgklmnprst", "aeiou", "bdgklmnprst", "aeiou"))
    seen = set(words)
    while len(words) < n:
        w = next(made)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words[:n]


@lru_cache(maxsize=None)
def train_llama_tokenizer(vocab_size: int = 1200, n_words: int = 300):
    """A ``LlamaTokenizer`` (transformers' own class and pipeline: BPE with byte fallback, no
    normalizer, ``Metaspace(prepend_scheme="first", split=False)``, ``<s>`` added in front,
    vocabulary laid out as Llama's: ``<unk>``, ``<s>``, ``</s>``, the 256 byte pieces
    ``<0x00>``..``<0xFF>``, then the trained pieces).  The BPE is trained on lines of
    :func:`generated_words` split at each "▁" (sentencepiece never merges across a word start),
    so a newline is only the byte piece ``<0x0A>`` and ``"\n"`` encodes as ``["▁", "<0x0A>"]``,
    as Llama-2's does.  ``vocab_size`` 300 leaves almost no whole words (the refusal's case)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaTokenizer

    words = generated_words(n_words)
    # each word often enough to become one piece; lines of 10 words in a fixed order
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(10)) for i in range(len(words) * 3)]
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    alphabet = sorted({c for w in words for c in w} | {"▁"})
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(texts, _bpe_trainer(vocab_size, special, alphabet))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return LlamaTokenizer(vocab=dict(model["vocab"]), merges=merges, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>", add_bos_token=True, add_eos_token=False, legacy=False,
                          add_prefix_space=True)


def save_tokenizer(folder, tokenizer=None) -> Path:
    folder = Path(folder)
    (tokenizer or train_tokenizer()).save_pretrained(folder)
    return folder


def save_tiny_gptj(folder, tokenizer, seed: int = 0, **config) -> Path:
    """A randomly initialised GPT-J for ``tokenizer``'s vocabulary (``config`` overrides
    GPTJConfig fields), saved with ``save_pretrained``."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    opts = dict(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=4, rotary_dim=8,
                n_inner=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    opts.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTJForCausalLM(GPTJConfig(**opts)).float().eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_llama(folder, tokenizer, seed: int = 0, **config) -> Path:
    """A randomly initialised ``LlamaForCausalLM`` for ``tokenizer``'s vocabulary: 2 layers,
    hidden size 32, 4 heads (2 key/value heads), MLP 64 (``config`` overrides LlamaConfig
    fields), saved with ``save_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    opts = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id)
    opts.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**opts)).float().eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_llama_dir(folder, seed: int = 0, vocab_size: int = 1200) -> Path:
    """The Llama tokenizer (:func:`train_llama_tokenizer`) and a tiny Llama for it, in one
    ``from_pretrained`` folder."""
    tokenizer = train_llama_tokenizer(vocab_size)
    save_tokenizer(folder, tokenizer)
    return save_tiny_llama(folder, tokenizer, seed=seed)


def make_tiny_llm_dir(folder, seed: int = 0) -> Path:
    """The byte-level tokenizer and a tiny GPT-J for it, in one ``from_pretrained`` folder."""
    tokenizer = train_tokenizer()
    save_tokenizer(folder, tokenizer)
    return save_tiny_gptj(folder, tokenizer, seed=seed)


def flip_in_member(path, member):
    """Invert the last byte of ``member``'s data inside the uncompressed zip (.npz) at ``path``:
    an array element, so only the member's CRC-32 can tell."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 128
    data[at + 30 + name_len + extra_len + info.file_size - 1] ^= 0xFF
    path.write_bytes(bytes(data))
