#!/usr/bin/env python3
"""Writes the tokenizer fixtures of tests/test_tokenizer.c: small tokenizer.json files in the layouts
of GPT-2, Llama 3, Qwen2, SmolLM (byte-level BPE) and Llama 2 / Mistral (BPE with byte fallback),
plus added tokens of every option, every split behavior and BPE with an unknown token, trained here
on a built-in text with HF `tokenizers`, and the ids and decoded strings HF tokenizers gives for a
set of texts (Unicode, digits, whitespace runs, special tokens, random mixtures).

Run by hand (not in CI), from the repository root:
    python3 -m venv /tmp/tk-venv && /tmp/tk-venv/bin/pip install tokenizers
    /tmp/tk-venv/bin/python tools/tokenizer-fixtures.py [OUT_DIR]   (default tests/fixtures/tokenizer)
Writes OUT_DIR/<family>/tokenizer.json and OUT_DIR/<family>/expected.json:
    {"tokenizers_version": ..., "roundtrip": bool,
     "cases": [{"text", "ids", "ids_special", "decoded", "decoded_skip"}, ...]}
ids: encode(text, add_special_tokens=False); ids_special: with True; decoded: decode(ids,
skip_special_tokens=False); decoded_skip: decode(ids_special, skip_special_tokens=True);
decoded_odd: decode(ids[1::2]), every other id, which cuts characters apart (U+FFFD replacements).
roundtrip: decode(encode(text)) must give the text back for every case of the family.
"""
import json
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

# The pre-tokenization patterns of the real tokenizer.json files.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAINING_TEXT = """
In the beginning the tokenizer knew nothing of words; it saw only bytes, and it counted the pairs
that came together most often, and it merged them, one rank after another, until the vocabulary was
full. The quick brown fox jumps over the lazy dog. It's the merges that they've learned, and we'll
see what you'd make of them. Numbers too: 1, 22, 333, 4444, 3.14159, 2024-12-05, 1,000,000.
def encode(text):
    return [vocab[piece] for piece in split(text)]  # a comment
    if x >= 10 and y != 0: print("done", x ** 2)
Café, naïve, résumé, façade, coöperate; Größe, Straße; año, niño; ça va? Ελληνικά, русский текст.
日本語のテキスト、中文文本和한국어 텍스트. Emoji 👍 and 🙂 in text. العربية עברית हिन्दी ไทย
The hidden state of a transformer is a vector; attention mixes the vectors of earlier tokens,
and the latent attention of DeepSeek caches a small vector per token instead of keys and values.
""" + "Mongolian \u180eseparators \u180ebetween \u180ewords. " * 12

TEXTS = [
    "Hello world",
    "I love New York, New Yorkers and New  York.",
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t\t x",
    "a  b   c    d",
    "trailing   ",
    "  leading",
    "line one\nline two\r\nline three\n\n  indented\n",
    "The year 2024 had 366 days; pi is 3.14159 and 1,000,000 is a million. 0123456789",
    "I'm sure you'll see it's theirs, they've said we'd go. DON'T SHOUT'S, it'ſ",
    "Café naïve façade résumé — “quotes” and ‘apostrophes’ … ©®™",
    "e\u0301 a\u0300 n\u0303 A\u030a (decomposed) vs é à ñ Å, ﬁ ligature, Ω ohm \u2126",
    "日本語のテキストです。中文文本，한국어 텍스트",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖!",
    "مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>The end.<|endoftext|>",
    "<s>Hello</s> world <unk> </s>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>",
    "a <mask> b, x  <mask>, [SEP]   y, word words sword word. <ab <abc> <abcd",
    "def f(x):\n    return x**2 + 1  # comment\n\tprint(\"done\")\n",
    "nbsp\u00a0here, ideographic\u3000space, zwj\u200d, em\u2003space, nel\u0085line, ls\u2028ps\u2029, mvs\u180eend",
    "as \u180eie, x \u180e\u180e y \u180e",  # U+180E is not White_Space (PCRE2's own \s says it is)
    "supercalifragilistic is a longword, and antidisestablishment too",
    "▁already ▁metaspace▁text and <0x41> byte names",
    "ab" * 130,
    "1234567890" * 10,
    " " * 300 + "x",
    "!!!???...,,,;;;" * 4,
]


def fuzz_texts(n, seed=5):
    """Random strings over an alphabet chosen to hit the pre-tokenizers' edges."""
    alphabet = (list("abcXYZ019 '\n\t.,!-_<>|") + ["  ", "\r\n", "'s", "'LL", "é", "e\u0301", "ß", "Ω", "日本",
                "中", "한", "👍", "🏽", "\u200d", "\u00a0", "\u3000", "▁", "<s>", "</s>", "<|im_end|>", "<|",
                "|>", "<0x41>", "١٢٣", "½", "Ⅻ", "\u180e", "\u2028", "\u0085", "ſ", "İ", "\ufeff"])
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def train(pre_tokenizer, vocab_size, limit_alphabet=None, initial_alphabet=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    kwargs = {"vocab_size": vocab_size, "show_progress": False}
    if limit_alphabet:
        kwargs["limit_alphabet"] = limit_alphabet
    if initial_alphabet:
        kwargs["initial_alphabet"] = initial_alphabet
    tok.train_from_iterator([TRAINING_TEXT] * 4, trainers.BpeTrainer(**kwargs))
    return json.loads(tok.to_str())


def added(id_, content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def byte_level_model(split_pre, vocab_size=520):
    """A trained byte-level BPE; split_pre is the pre-tokenizer that comes before ByteLevel."""
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_pre is None)
    pre = bl if split_pre is None else pre_tokenizers.Sequence([split_pre, bl])
    return train(pre, vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def with_specials(d, names):
    """Appends special tokens after the vocabulary, as added tokens with fresh ids."""
    vocab = d["model"]["vocab"]
    out = []
    for name in names:
        vocab[name] = len(vocab)
        out.append(added(vocab[name], name))
    return out


def byte_level(split=None, digits=False):
    """The pre-tokenizer chain: Digits and/or a Split pattern, then ByteLevel."""
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": split is None}
    steps = ([{"type": "Digits", "individual_digits": True}] if digits else []) + (
        [{"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False}] if split else [])
    return {"type": "Sequence", "pretokenizers": steps + [bl]} if steps else bl


def gpt2():
    d = byte_level_model(None)
    d["added_tokens"] = with_specials(d, ["<|endoftext|>"])
    d["added_tokens"][0]["normalized"] = True
    d["pre_tokenizer"] = byte_level()
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    return d, True


def added_options():
    """GPT-2's layout with added tokens of every option: lstrip, rstrip, single_word, normalized,
    not special, and overlapping contents (leftmost-longest)."""
    d, _ = gpt2()
    vocab = d["model"]["vocab"]
    extra = [("<mask>", dict(lstrip=True)), ("[SEP]", dict(rstrip=True)),
             ("word", dict(single_word=True, special=False, normalized=True)),
             ("<ab", dict(special=False, normalized=True)), ("<abc>", dict(special=False)),
             ("<abcd", dict(special=False))]
    for content, opts in extra:
        vocab[content] = len(vocab)
        d["added_tokens"].append(added(vocab[content], content, **{"special": True, **opts}))
    return d, False


def llama3():
    d = byte_level_model(pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), "isolated"))
    d["added_tokens"] = with_specials(d, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                          "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"])
    d["pre_tokenizer"] = byte_level(split=LLAMA3_PATTERN)
    d["model"]["ignore_merges"] = True
    # Whole words in the vocabulary without the merges that would build them: ignore_merges finds them.
    for word in ["Ġsupercalifragilistic", "Ġantidisestablishment"]:
        d["model"]["vocab"][word] = len(d["model"]["vocab"])
    bos = d["model"]["vocab"]["<|begin_of_text|>"]
    d["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}}]}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return d, True


def qwen2():
    d = byte_level_model(pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), "isolated"))
    d["added_tokens"] = with_specials(d, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    d["normalizer"] = {"type": "NFC"}
    d["pre_tokenizer"] = byte_level(split=QWEN2_PATTERN)
    d["pre_tokenizer"]["pretokenizers"][-1]["trim_offsets"] = False
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return d, False  # NFC changes decomposed text


def smollm():
    d = byte_level_model(pre_tokenizers.Digits(individual_digits=True))
    # SmolLM's special tokens come first in its vocabulary: shift the trained ids up.
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    d["model"]["vocab"] = {**{s: i for i, s in enumerate(specials)},
                           **{t: i + len(specials) for t, i in d["model"]["vocab"].items()}}
    d["added_tokens"] = [added(i, s) for i, s in enumerate(specials)]
    d["pre_tokenizer"] = byte_level(digits=True)
    d["pre_tokenizer"]["pretokenizers"][-1]["use_regex"] = True
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return d, True


def sentencepiece_model():
    """Llama 2's vocabulary layout: <unk> <s> </s>, the 256 byte tokens, then the trained pieces
    (few characters, so CJK and emoji go through byte fallback)."""
    d = train(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True), 420, limit_alphabet=60)
    trained = sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in trained:
        vocab.setdefault(t, len(vocab))
    d["model"].update(vocab=vocab, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    d["added_tokens"] = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
    d["pre_tokenizer"] = None
    return d


def unk(fuse):
    """BPE with an unknown token and no byte fallback: characters outside the vocabulary become
    <unk>, one per character or fused per run."""
    d = train(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True), 200, limit_alphabet=40)
    trained = sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0}
    for t, _ in trained:
        vocab.setdefault(t, len(vocab))
    d["model"].update(vocab=vocab, unk_token="<unk>", byte_fallback=False, fuse_unk=fuse)
    d["added_tokens"] = [added(0, "<unk>")]
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    return d, False


def template(prefix, suffix, vocab):
    items = [{"SpecialToken": {"id": t, "type_id": 0}} for t in prefix] + [{"Sequence": {"id": "A", "type_id": 0}}] + \
            [{"SpecialToken": {"id": t, "type_id": 0}} for t in suffix]
    return {"type": "TemplateProcessing", "single": items, "pair": items + [{"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in prefix + suffix}}


def llama2():
    d = sentencepiece_model()
    d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    d["post_processor"] = template(["<s>"], [], d["model"]["vocab"])
    # A normalized added token is matched (and decoded) as the normalizer writes it: "▁New▁York".
    d["model"]["vocab"]["New York"] = len(d["model"]["vocab"])
    d["added_tokens"].append(added(d["model"]["vocab"]["New York"], "New York", special=False, normalized=True))
    return d, False


def mistral_metaspace():
    """The layout transformers writes for Llama 2 / Mistral without legacy: a Metaspace
    pre-tokenizer prepending only at the start of the text, and a Metaspace decoder."""
    d = sentencepiece_model()
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    d["post_processor"] = template(["<s>"], ["</s>"], d["model"]["vocab"])
    return d, False


def split_behaviors():
    """Every Split behavior, invert, string patterns, a Replace regex normalizer and Metaspace
    splitting, over the byte-fallback vocabulary."""
    d = sentencepiece_model()
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "[\\t ]{2,}"}, "content": " "}, {"type": "NFKC"}]}
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[,;]"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Contiguous", "invert": True},
        {"type": "Split", "pattern": {"String": "!"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Digits", "individual_digits": False},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}]}
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": "x", "start": 2, "stop": 0}]}
    d["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
                           "trim_offsets": True, "add_prefix_space": False}
    return d, False


FAMILIES = {"gpt2": gpt2, "added_options": added_options, "llama3": llama3, "qwen2": qwen2, "smollm": smollm,
            "llama2": llama2, "mistral_metaspace": mistral_metaspace, "split_behaviors": split_behaviors,
            "unk_fused": lambda: unk(True), "unk_separate": lambda: unk(False)}


def main(out_dir):
    texts = TEXTS + fuzz_texts(14)
    for name, make in FAMILIES.items():
        d, roundtrip = make()
        d["version"] = "1.0"
        d.setdefault("truncation", None)
        d.setdefault("padding", None)
        text = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
        tk = Tokenizer.from_str(text)
        cases = []
        for t in texts:
            ids = tk.encode(t, add_special_tokens=False).ids
            ids_special = tk.encode(t, add_special_tokens=True).ids
            cases.append({"text": t, "ids": ids, "ids_special": ids_special,
                          "decoded": tk.decode(ids, skip_special_tokens=False),
                          "decoded_skip": tk.decode(ids_special, skip_special_tokens=True),
                          "decoded_odd": tk.decode(ids[1::2], skip_special_tokens=False)})
            if roundtrip and cases[-1]["decoded"] != t:
                sys.exit("%s: HF does not round-trip %r" % (name, t))
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        with open(os.path.join(out_dir, name, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(out_dir, name, "expected.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizers_version": tokenizers.__version__, "roundtrip": roundtrip, "cases": cases}, f,
                      ensure_ascii=False, separators=(",", ":"))
        print("%-18s vocab %5d, %d cases" % (name, tk.get_vocab_size(), len(cases)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tokenizer")
