"""Qwen2Tokenizer (csrc/tokenizer.c) against HF `tokenizers`: the ids of several thousand diverse
strings in fixtures/tokenizer_golden.json.xz (written by tests/reference/make_tokenizer_golden.py),
HF's decode of them and of random id sequences, the prompt template, truncation, and the errors.
The tokenizer is the vendored fixtures/qwen3-tokenizer, unpacked to a temporary folder."""
import json
import lzma
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import zimage
from conftest import FIXTURES

Qwen2Tokenizer = getattr(zimage, "Qwen2Tokenizer", None) or zimage._zimage.Qwen2Tokenizer
VENDORED = os.path.join(FIXTURES, "qwen3-tokenizer")
PREFIX = "<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer_json():
    with lzma.open(os.path.join(VENDORED, "tokenizer.json.xz")) as f:
        return f.read()


def make_dir(path, tokenizer_json, config=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_bytes(tokenizer_json)
    if config:
        shutil.copy(os.path.join(VENDORED, "tokenizer_config.json"), path / "tokenizer_config.json")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer_json):
    return make_dir(tmp_path_factory.mktemp("qwen3") / "tokenizer", tokenizer_json)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Qwen2Tokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def golden():
    with lzma.open(os.path.join(FIXTURES, "tokenizer_golden.json.xz")) as f:
        return json.loads(f.read())


def first_mismatches(pairs, limit=3):
    return [(text, want, got) for text, want, got in pairs if want != got][:limit]


def test_exported_from_package():
    assert zimage.Qwen2Tokenizer is zimage._zimage.Qwen2Tokenizer


def test_golden_encode(tok, golden):
    cases = golden["cases"]
    assert len(cases) > 5000
    got = [(c["text"], c["ids"], tok.encode(c["text"])) for c in cases]
    wrong = first_mismatches(got, limit=len(got))
    assert not wrong, f"{len(wrong)} of {len(cases)} strings differ from tokenizers {golden['tokenizers_version']}: " \
                      f"{wrong[:3]!r}"


def test_golden_decode(tok, golden):
    pairs = []
    for c in golden["cases"]:
        dec = c.get("decoded", c["text"])
        pairs.append((c["ids"], dec, tok.decode(c["ids"])))
        pairs.append((c["ids"], c.get("decoded_skip", dec), tok.decode(c["ids"], skip_special_tokens=True)))
    for c in golden["decode_cases"]:  # random ids: ill-formed UTF-8, special tokens
        pairs.append((c["ids"], c["decoded"], tok.decode(c["ids"], skip_special_tokens=False)))
        pairs.append((c["ids"], c["decoded_skip"], tok.decode(c["ids"], skip_special_tokens=True)))
    assert not first_mismatches(pairs)


def test_sizes_and_special_ids(tok, golden):
    assert tok.vocab_size == golden["vocab_size"] == len(tok)
    assert [tok.eos_token_id] == tok.encode("<|im_end|>")
    assert [tok.pad_token_id] == tok.encode("<|endoftext|>")
    assert tok.bos_token_id is None


def test_prompt_template(tok, golden):
    assert tok.format_prompt("A cat") == PREFIX + "A cat" + SUFFIX
    assert tok.format_prompt("") == PREFIX + SUFFIX
    templated = [c for c in golden["cases"] if c["text"].startswith(PREFIX) and c["text"].endswith(SUFFIX)]
    assert len(templated) >= 5
    for c in templated:
        prompt = c["text"][len(PREFIX):len(c["text"]) - len(SUFFIX)]
        assert tok.format_prompt(prompt) == c["text"]
        assert tok.encode_prompt(prompt) == c["ids"]


def test_truncation(tok):
    prompt = " ".join(["cat"] * 600)
    full = tok.encode(tok.format_prompt(prompt))
    assert len(full) > 512
    assert tok.encode_prompt(prompt) == full[:512]
    assert tok.encode_prompt(prompt, max_sequence_length=10) == full[:10]
    assert tok.encode_prompt(prompt, 100000) == full
    short = tok.encode_prompt("A cat", max_sequence_length=512)
    assert short == tok.encode(tok.format_prompt("A cat"))
    with pytest.raises(ValueError):
        tok.encode_prompt("A cat", max_sequence_length=0)


def test_empty(tok):
    assert tok.encode("") == []
    assert tok.decode([]) == ""


def test_text_errors(tok):
    for call in (tok.encode, tok.format_prompt, tok.encode_prompt):
        with pytest.raises(ValueError):
            call("a\ud800b")  # lone surrogate: not encodable as UTF-8
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_decode_errors(tok):
    for bad in ([tok.vocab_size], [-1], [0, 1, 2 ** 40], [2 ** 70]):
        with pytest.raises(ValueError):
            tok.decode(bad)
    with pytest.raises(TypeError):
        tok.decode(["a"])
    with pytest.raises(TypeError):
        tok.decode(None)
    assert tok.decode(tok.encode("hi")[0]) == "hi"  # a single int, as HF accepts
    assert tok.decode(tuple(tok.encode("hé"))) == "hé"


def test_from_pretrained_paths(tmp_path, tok_dir, tok):
    root = tmp_path / "Z-Image-Turbo"
    shutil.copytree(tok_dir, root / "tokenizer")
    t2 = Qwen2Tokenizer.from_pretrained(root, subfolder="tokenizer")  # PathLike + subfolder
    assert t2.encode("A cat 😀") == tok.encode("A cat 😀")
    with pytest.raises(FileNotFoundError):
        Qwen2Tokenizer.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        Qwen2Tokenizer.from_pretrained(root)  # no tokenizer.json at the root
    with pytest.raises(FileNotFoundError):
        Qwen2Tokenizer.from_pretrained(root, subfolder="text_encoder")
    with pytest.raises(TypeError):
        Qwen2Tokenizer()


def test_config_optional(tmp_path, tokenizer_json, tok):
    t = Qwen2Tokenizer.from_pretrained(make_dir(tmp_path / "t", tokenizer_json, config=False))
    assert t.encode("<|im_start|>user") == tok.encode("<|im_start|>user")
    assert t.eos_token_id is None and t.pad_token_id is None


def test_merges_as_strings(tmp_path, tokenizer_doc, golden):
    def to_strings(d):  # the older "a b" form of merges
        d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    t = Qwen2Tokenizer.from_pretrained(make_dir(tmp_path / "t", _edited(tokenizer_doc, to_strings)))
    for c in golden["cases"][:500]:
        assert t.encode(c["text"]) == c["ids"]


@pytest.fixture(scope="module")
def tokenizer_doc(tokenizer_json):
    return json.loads(tokenizer_json)


def _edited(doc, edit):
    """Copies of the parts the edits touch (a deep copy of 300k entries is slow), then edit."""
    d = dict(doc)
    d["model"] = dict(doc["model"], vocab=dict(doc["model"]["vocab"]), merges=list(doc["model"]["merges"]))
    d["pre_tokenizer"] = json.loads(json.dumps(doc["pre_tokenizer"]))
    d["added_tokens"] = json.loads(json.dumps(doc["added_tokens"]))
    edit(d)
    return json.dumps(d).encode()


CORRUPT = {
    "NFKC normalizer": lambda d: d.update(normalizer={"type": "NFKC"}),
    "other split regex": lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\s+"),
    "WordPiece model": lambda d: d["model"].update(type="WordPiece"),
    "merge of an unknown token": lambda d: d["model"]["merges"].__setitem__(3, ["Ġ", "zzz-not-a-token"]),
    "three-part merge string": lambda d: d["model"]["merges"].__setitem__(3, "a b c"),
    "vocab without a byte token": lambda d: d["model"]["vocab"].pop("Ġ"),
    "duplicate vocab id": lambda d: d["model"]["vocab"].update(zzzq=7),
    "vocab id not an int": lambda d: d["model"]["vocab"].update(zzzq="7"),
    "lstrip added token": lambda d: d["added_tokens"][0].update(lstrip=True),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_tokenizer_json(tmp_path, tokenizer_doc, name):
    d = make_dir(tmp_path, _edited(tokenizer_doc, CORRUPT[name]))
    with pytest.raises(ValueError):
        Qwen2Tokenizer.from_pretrained(d)


@pytest.mark.parametrize("name", ["truncated", "not json", "top-level list"])
def test_malformed_tokenizer_json(tmp_path, tokenizer_json, name):
    data = {"truncated": tokenizer_json[: len(tokenizer_json) // 2], "not json": b"\x00\x01 not json",
            "top-level list": b"[]"}[name]
    with pytest.raises(ValueError):
        Qwen2Tokenizer.from_pretrained(make_dir(tmp_path, data))


def test_corrupt_config(tmp_path, tokenizer_json):
    d = make_dir(tmp_path / "t", tokenizer_json)
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|no_such_token|>"}))
    with pytest.raises(ValueError):
        Qwen2Tokenizer.from_pretrained(d)
    (d / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError):
        Qwen2Tokenizer.from_pretrained(d)


def test_threads(tok, golden):
    cases = golden["cases"][:3000]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: tok.encode(c["text"]), cases))
    assert got == [c["ids"] for c in cases]
