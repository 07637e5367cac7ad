"""CLIPTokenizer: ids identical to 🤗 transformers' CLIPTokenizer (same vocab.json/merges.txt, the settings every SD
pipeline uses), on a hand-written corpus and on hypothesis-generated text."""
import json, logging
import pytest, torch
from hypothesis import given, settings, HealthCheck, strategies as st
from sd_from_scratch.tokenizer import CLIPTokenizer, normalize, pre_tokenize, build_clip_vocab, read_bpe_merges

transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def tok(): return CLIPTokenizer()

@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(d)
    return d

@pytest.fixture(scope="module")
def hf(folder):
    t = transformers.CLIPTokenizer.from_pretrained(folder)
    assert len(t) == 49408, "transformers did not load our vocabulary (a silently ignored keyword?)"
    return t

def hf_ids(hf, texts, max_length=77):
    return hf(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")

LONG = "a very detailed painting of " + ", ".join(f"item number {i} in {c}" for i, c in enumerate(["red", "blue", "green"] * 12))
CORPUS = [
    "a photograph of an astronaut riding a horse", "", " ", "   leading and trailing   ", "Hello, World!!! ...",
    "don't you're we've I'm they'll he'd it's DON'T", "’s curly apostrophe’s", "3.14159 + 42 = 1,000,000? ½ ² ٣",
    "café naïve façade Ångström ΟΔΟΣ İstanbul straße ẞ", "e\u0301 a\u0308 (combining)", "🐱🚀 👩‍👩‍👧 ❤️ 🇫🇷",
    "東京タワーの写真", "고양이 사진", "中文，标点。", "a\tb\nc\u00a0d\u2003e\u3000f\x85g\x1ch\u200bi\ufeffj",
    "&amp; &lt;b&gt; &#39;html&#39;", "ＡＢＣ ｆｕｌｌｗｉｄｔｈ １２３", "“curly” ‘quotes’ — dash … ﬁ ﬂ",
    "<|startoftext|>x<|endoftext|> <|STARTOFTEXT|> <|endoftext|><|endoftext|>", "!<|endoftext|>!", "a<|startoftext|>b",
    "snake_case-and-kebab/slashes\\back", "$$$ ### @@@ ~~~ ```", "\x00\x01 control \x7f", "a" * 300, "ab " * 200,
    LONG, LONG.upper(),
]

def test_vocab_shape(tok):
    merges = read_bpe_merges()
    assert len(merges) == 48894 and len(build_clip_vocab(merges)) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length) == (49406, 49407, 49407, 77)

def test_corpus_parity(tok, hf):
    ours, theirs = tok(CORPUS, warn=False), hf_ids(hf, CORPUS)
    for i, s in enumerate(CORPUS):
        assert ours.input_ids[i].tolist() == theirs.input_ids[i].tolist(), f"ids differ for {s!r}"
    assert torch.equal(ours.attention_mask, theirs.attention_mask)
    assert ours.input_ids.dtype == torch.long and ours.input_ids.shape == (len(CORPUS), 77)

@pytest.mark.parametrize("s", CORPUS)
def test_encode_decode_parity(tok, hf, s):
    ids = tok.encode(s)
    assert ids == hf.encode(s)
    assert tok.tokenize(s) == hf.tokenize(s)
    assert tok.decode(ids) == hf.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)

@pytest.mark.parametrize("max_length", [2, 5, 16, 77])
def test_other_max_lengths(tok, hf, max_length):
    assert torch.equal(tok(CORPUS, max_length=max_length, warn=False).input_ids, hf_ids(hf, CORPUS, max_length).input_ids)

def test_padding_longest_and_lists(tok, hf):
    texts = ["a cat", "a dog on a skateboard", ""]
    ours = tok(texts, padding="longest")
    theirs = hf(texts, padding="longest", return_tensors="pt")
    assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.attention_mask, theirs.attention_mask)
    lists = tok(texts, padding=False, return_tensors=None)
    assert lists.input_ids == hf(texts).input_ids

def test_empty_prompt(tok):
    e = tok("")
    assert e.input_ids[0].tolist() == [49406] + [49407] * 76
    assert e.attention_mask[0].tolist() == [1, 1] + [0] * 75

def test_truncation_keeps_end_token_and_warns(tok, caplog):
    full = tok.encode(LONG, add_special_tokens=False)
    assert len(full) > 75
    with caplog.at_level(logging.WARNING, logger="sd_from_scratch.tokenizer"):
        e = tok(LONG)
    assert e.input_ids[0, -1].item() == 49407 and e.attention_mask.sum().item() == 77
    assert e.input_ids[0, 1:76].tolist() == full[:75]
    msg = caplog.text
    assert "prompt truncated to 77 tokens" in msg and f"the last {len(full) - 75} of {len(full)} tokens are ignored" in msg
    assert repr(tok.decode(full[75:])[:40]) in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sd_from_scratch.tokenizer"):
        tok("short prompt"); tok(LONG, warn=False)
    assert caplog.text == ""

def test_type_errors(tok):
    for bad in [None, 3, 2.5, b"bytes", {"a": 1}]:
        with pytest.raises(TypeError, match="str or a list of str"): tok(bad)
    with pytest.raises(TypeError, match="item 1"): tok(["ok", 7])
    with pytest.raises(TypeError): tok.encode(None)
    with pytest.raises(ValueError, match="padding"): tok("x", padding="weird")
    with pytest.raises(ValueError, match="outside the vocabulary"): tok.decode([10**6])

def test_attribute_access_and_tuple(tok):
    e = tok(("a", "b"))
    assert e.input_ids is e["input_ids"] and e.input_ids.shape == (2, 77)

def test_folder_roundtrip(tok, folder, tmp_path):
    t2 = CLIPTokenizer.from_pretrained(folder)
    assert len(t2) == 49408 and t2.encoder == tok.encoder and t2.bpe_ranks == tok.bpe_ranks
    (tmp_path / "pipe" / "tokenizer").mkdir(parents=True)
    tok.save_pretrained(tmp_path / "pipe" / "tokenizer")
    t3 = CLIPTokenizer.from_pretrained(tmp_path / "pipe")
    assert torch.equal(t3(CORPUS, warn=False).input_ids, tok(CORPUS, warn=False).input_ids)
    with pytest.raises(FileNotFoundError, match="vocab.json"): CLIPTokenizer.from_pretrained(tmp_path)

def test_reads_transformers5_tokenizer_json(hf, tok, tmp_path):
    "transformers 5 save_pretrained writes only tokenizer.json + tokenizer_config.json."
    hf.save_pretrained(tmp_path)
    t2 = CLIPTokenizer.from_pretrained(tmp_path)
    assert t2.model_max_length == 77     # 🤗 writes a huge number when unset; we keep CLIP's 77
    assert torch.equal(t2(CORPUS, warn=False).input_ids, tok(CORPUS, warn=False).input_ids)

def test_pad_token_from_folder(tok, tmp_path):
    "SD 2 tokenizers pad with '!' (id 0): the folder's special_tokens_map.json decides."
    tok.save_pretrained(tmp_path)
    m = json.loads((tmp_path / "special_tokens_map.json").read_text()); m["pad_token"] = {"content": "!"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(m))
    c = json.loads((tmp_path / "tokenizer_config.json").read_text()); c["pad_token"] = "!"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(c))
    t2 = CLIPTokenizer.from_pretrained(tmp_path)
    assert t2.pad_token_id == 0
    e = t2("a cat")
    assert e.input_ids[0].tolist() == [49406, 320, 2368, 49407] + [0] * 73
    hf2 = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert torch.equal(e.input_ids, hf_ids(hf2, "a cat").input_ids)

def test_normalize_rules():
    assert normalize("A\u00a0 B\n\tC") == "a b c"
    assert normalize("ΟΔΟΣ") == "οδοσ"              # per-character lower-case, like 🤗 tokenizers
    assert normalize("e\u0301") == "é"               # NFC
    assert pre_tokenize("it's 42!") == ["it", "'s", "4", "2", "!"]

# Characters that Python 3.11's Unicode 14 tables know (unassigned code points may be letters, or have case, in the
# newer Unicode tables of 🤗 tokenizers / the regex module — a difference of Unicode versions, not of algorithm).
chars = st.characters(exclude_categories=("Cs", "Cn"))
mixed = st.one_of(st.text(chars, max_size=40),
                  st.lists(st.sampled_from(list("abcXYZ '’!?.,-0123456789 \t\néüß東京😀ΣİＡ&;<|>") + ["<|endoftext|>", "'s", "'LL"]),
                           max_size=60).map("".join))

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mixed, min_size=1, max_size=4))
def test_hypothesis_parity(tok, hf, texts):
    ours, theirs = tok(texts, warn=False), hf_ids(hf, texts)
    assert ours.input_ids.tolist() == theirs.input_ids.tolist(), texts
    assert torch.equal(ours.attention_mask, theirs.attention_mask)
    for t in texts: assert tok.decode(tok.encode(t)) == hf.decode(hf.encode(t)), t

# Without the `regex` package: `re` patterns built from Python's unicodedata tables give the same pieces and ids.
@pytest.fixture(scope="module")
def re_patterns():
    from sd_from_scratch.tokenizer import clip_patterns
    return clip_patterns(use_regex=False)

def test_fallback_patterns_corpus(tok, hf, re_patterns, monkeypatch):
    import sd_from_scratch.tokenizer as T
    monkeypatch.setattr(T, "_WS", re_patterns[0]); monkeypatch.setattr(T, "PAT", re_patterns[1])
    t2 = CLIPTokenizer()
    assert torch.equal(t2(CORPUS, warn=False).input_ids, hf_ids(hf, CORPUS).input_ids)

@settings(max_examples=200, deadline=None)
@given(st.text(chars, max_size=60))
def test_fallback_patterns_hypothesis(re_patterns, s):
    import regex
    from sd_from_scratch.tokenizer import CLIP_PATTERN
    assert re_patterns[0].sub(" ", s) == regex.sub(r"\s+", " ", s)
    assert re_patterns[1].findall(s) == regex.findall(CLIP_PATTERN, s)


def test_truncation_warning_is_one_short_line(caplog):
    "A prompt past 77 tokens warns in one line with counts, not with the whole cut-off text (issue 25)."
    import logging
    from sd_from_scratch.tokenizer import CLIPTokenizer
    tok = CLIPTokenizer()
    long = ", ".join(["a lonely keeper waving from the balcony"] * 40)
    with caplog.at_level(logging.WARNING, logger="sd_from_scratch.tokenizer"):
        ids = tok([long])["input_ids"]
    assert tuple(ids.shape) == (1, 77)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "\n" not in msgs[0] and len(msgs[0]) < 200, msgs
    n = len(tok.encode(long, add_special_tokens=False))
    assert f"the last {n - 75} of {n} tokens are ignored" in msgs[0], msgs[0]
