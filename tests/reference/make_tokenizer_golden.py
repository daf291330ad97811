#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer_golden.json.xz: HF `tokenizers` ids and decodes for a few
thousand diverse strings, the reference that tests/test_tokenizer.py holds zimage to.

    python tests/reference/make_tokenizer_golden.py [--tokenizer DIR] [--out PATH]

DIR defaults to the vendored tests/fixtures/qwen3-tokenizer (its tokenizer.json.xz is read in
memory). Needs `pip install tokenizers`; the file records the version used (0.23.3 so far). The strings are generated from a fixed seed (mixes of
scripts, whitespace kinds, digits, code, emoji sequences, combining marks, special tokens, ...)
plus hand-picked ones (the spec's test vectors, long runs, the empty string). Random id
sequences are added as decode-only cases (they hit ill-formed UTF-8 and special tokens).
Per string: "ids", and "decoded" / "decoded_skip" (HF decode with skip_special_tokens False /
True) only where they differ from the text / from "decoded".
"""
import argparse
import hashlib
import json
import lzma
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
SEED = 20240611

PROMPT_PREFIX = "<|im_start|>user\n"
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

# ------------------------------------------------------------------------------------------
# building blocks

LATIN_WORDS = ("hello world The quick brown fox jumps over lazy dog cat photo of a cute cyberpunk neon lights "
               "high definition ultra-detailed naïve café Straße façade résumé Ærøskøbing İstanbul ŁÓDŹ "
               "Ωmega ĳssel ǅemal encyclopædia coöperate Zürich São Paulo Việt Nam").split()
CYRILLIC = "Привет мир Съешь же ещё этих мягких французских булок да выпей чаю".split()
GREEK = "Καλημέρα κόσμε ΆΈΉ ώρα ΰ ΐ".split()
CJK_MODERN = "一幅为名为造相的项目设计的创意海报画面巧妙地将文字概念视觉化一辆复古蒸汽小火车化身为巨大的拉链头正拉开厚厚的冬日积雪展露出一个生机盎然的春天"
CJK_CLASSICAL = "學而時習之不亦說乎有朋自遠方來不亦樂乎人不知而不慍不亦君子乎道可道非常道名可名非常名"
CJK_PUNCT = "，。、；：？！「」『』（）《》〈〉【】“”‘’…—～·〃〆〇"
HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097))
KATAKANA = "".join(chr(c) for c in range(0x30A1, 0x30FB)) + "ー"
HALFWIDTH_KANA = "".join(chr(c) for c in range(0xFF66, 0xFF9E))
JAPANESE = ["東京都", "日本語の文章です。", "カタカナ", "ｶﾀｶﾅ", "ひらがな", "漢字仮名交じり文", "ヴァイオリン"]
ARABIC = ["مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "٠١٢٣٤٥٦٧٨٩", "قُرْآن", "ﻻ", "ﷺ"]
HEBREW = ["שָׁלוֹם", "עברית", "בְּרֵאשִׁית"]
INDIC = ["नमस्ते", "हिन्दी", "१२३", "ଓଡ଼ିଆ", "\u0b47\u0b3e", "\u0dd9\u0dcf", "தமிழ்", "\u0bc6\u0bbe", "ಕನ್ನಡ", "ക്ഷ"]
THAI = ["สวัสดีครับ", "ภาษาไทย", "๑๒๓"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "⚡️", "🇯🇵", "🇺🇸", "1️⃣", "#️⃣", "👩🏿‍💻", "🧑‍🤝‍🧑", "🐱",
         "🔥🔥🔥", "✨", "☕", "🤷‍♂️", "😂😂", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\r\n\r\n", " \n ", "\u00a0", "\u3000",
              "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\u1680", "\u2000", "\u2003", "\u2009", "\u200a",
              "\u202f", "\u205f", " \t\n", "\n \n"]
NOT_WHITESPACE = ["\u200b", "\ufeff", "\u180e", "\x1c", "\x1d", "\x1e", "\x1f", "\x00", "\x7f", "\u200d", "\u2060"]
DIGITS = ["0", "7", "42", "2024", "3.14159", "1,000,000", "１２３", "①②③", "Ⅻ", "〇", "٣", "१२३", "๑", "²³",
          "½", "⁴", "𝟙𝟚", "1e-5", "0x1F", "-12"]
CODE = ["def f(x):\n    return x**2\n", "if (a && b) { c++; }", "<div class=\"x\">hi</div>", "SELECT * FROM t;",
        "i += 1;  // comment", "https://example.com/a?b=c&d=e#f", "{\"key\": [1, 2, null]}", "#include <stdio.h>",
        "    indented\n\tline\n", "a_b-c.d/e\\f", "x = [i for i in range(10)]", "$ ls -la | grep foo",
        "fn main() -> Result<(), Box<dyn Error>> {}", "λx.x", "a != b >= c <= d", "@decorator", "/* ... */"]
PUNCT = ["!", "?", "...", "!!!", ",", ".", ";", ":", "—", "–", "-", "(", ")", "[", "]", "\"", "'", "`", "~",
         "«", "»", "¿", "¡", "§", "¶", "†", "•", "©", "®", "™", "°", "%", "‰", "&", "*", "_", "=", "+", "|"]
CONTRACTIONS = ["don't", "DON'T", "It'S", "'Re", "I'm", "you'll", "we've", "they'd", "it's", "y'all", "'s", "'t",
                "'ll", "'LL", "'Ve", "it’s", "it'ſ", "o'clock", "rock'n'roll", "''", "'''", "' s", "'1", "'é"]
COMBINING = ["e\u0301", "A\u030a", "o\u0308\u0304", "a\u0323\u0302", "a\u0302\u0323", "q\u0307\u0323",
             "\u1100\u1161\u11a8", "\u1100\u1161", "\u110b\u1175\u11af", "\u1112\u1161\u11ab\u1100\u1173\u11af",
             "\u0b47\u0b3e", "\U0001d15e", "\uf900", "\uf9ff", "\U0002f800", "\u212b", "\u2126", "\u0344",
             "\u0958", "\u00c5\u0301", "\u1e9b\u0323", "x\u0305\u0332\u0305", "\u0041\u0334\u0301",
             "\u0061\u0315\u0300\u05ae\u0300\u0062", "\u0300", "\u0301\u0301", "ê\u0300", "\u0fb2\u0f80",
             "\u0f77", "\u3099", "か\u3099", "\u304b\u309a", "\u0627\u0653", "\u05d1\u05bc", "\ufb2c",
             # marks newer than Unicode 9 (NFC leaves them unordered in HF tokenizers)
             "a\u0898\u0316", "a\u07fd\u0301", "a\u1df6\u0316", "\U00011935\U00011930", "a\u08d3\u0301",
             "\U000105c9", "\U000105c0\u0307"]
FULLWIDTH = ["ＡＢＣ", "ｈｅｌｌｏ", "！？", "（ｘ）", "＄１００", "ｗｗｗ"]
NEW_UNICODE = ["\U0001e5d0\U0001e5d1", "\U00010d40\U00010d41", "\U00031350", "\U0002ebf0", "\U00011f04",
               "\u1c89\u1c8a", "\ua7cb", "\U0001fae8", "\U0001f6dc", "\u0c5d", "\U000116d0"]
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
         "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
         "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
         "</tool_response>", "<think>", "</think>"]
ADDED_NEAR = ["<|im_start", "<|im_end|", "<think", "</think", "<|", "|>", "<>", "<|im_start|>>", "<<|im_end|>",
              "<|im_end|>\u0338", "<think>\u0301", "<|endoftext|>|>"]


def rand_run(rng, alphabet, lo=1, hi=12):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_cp(rng):
    """Any scalar value, weighted toward the BMP."""
    while True:
        r = rng.random()
        c = rng.randrange(0x80) if r < 0.2 else rng.randrange(0x10000) if r < 0.75 else rng.randrange(0x110000)
        if not 0xD800 <= c < 0xE000:
            return chr(c)


def atom(rng):
    k = rng.randrange(22)
    if k == 0: return rng.choice(LATIN_WORDS)
    if k == 1: return rng.choice(CYRILLIC + GREEK)
    if k == 2: return rand_run(rng, CJK_MODERN, 1, 20)
    if k == 3: return rand_run(rng, CJK_CLASSICAL, 1, 12)
    if k == 4: return rand_run(rng, CJK_PUNCT, 1, 3)
    if k == 5: return rng.choice(JAPANESE) if rng.random() < 0.5 else rand_run(rng, HIRAGANA + KATAKANA + HALFWIDTH_KANA)
    if k == 6: return "".join(chr(rng.randrange(0xAC00, 0xD7A4)) for _ in range(rng.randint(1, 6)))
    if k == 7: return rng.choice(ARABIC + HEBREW + INDIC + THAI)
    if k == 8: return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3)))
    if k in (9, 10): return rng.choice(WHITESPACE)
    if k == 11: return rng.choice(NOT_WHITESPACE)
    if k == 12: return rng.choice(DIGITS) if rng.random() < 0.6 else str(rng.randrange(10 ** rng.randint(1, 12)))
    if k == 13: return rng.choice(CODE)
    if k == 14: return rand_run(rng, PUNCT, 1, 4)
    if k == 15: return rng.choice(CONTRACTIONS)
    if k == 16: return rng.choice(COMBINING)
    if k == 17: return rng.choice(FULLWIDTH)
    if k == 18: return rng.choice(NEW_UNICODE)
    if k == 19: return rng.choice(ADDED) if rng.random() < 0.7 else rng.choice(ADDED_NEAR)
    if k == 20:  # random marks with mixed combining classes after a base
        base = rng.choice("aeiouAEIOUnsczgkhwy한가ᄀ")
        return base + "".join(chr(rng.choice([*range(0x300, 0x370), *range(0x591, 0x5c8), *range(0x1dc0, 0x1e00),
                                               *range(0x20d0, 0x20f1), 0x302a, 0x302b, 0x302c, 0x302d,
                                               0x1161, 0x1175, 0x11a8, 0x11c2, 0x3099, 0x309a]))
                              for _ in range(rng.randint(1, 4)))
    return "".join(rand_cp(rng) for _ in range(rng.randint(1, 6)))


def mixed_string(rng):
    parts = [atom(rng) for _ in range(rng.randint(1, 30))]
    out = []
    for p in parts:
        out.append(p)
        r = rng.random()
        if r < 0.45: out.append(" ")
        elif r < 0.5: out.append(rng.choice(WHITESPACE))
    return "".join(out)


# small alphabet that hits every branch of the split regex and of NFC
STRESS = ["a", "A", "b", " ", " ", "\t", "\n", "\r", "'", "s", "S", "l", "L", "e", "E", "r", "v", "d", "m", "t",
          "ſ", "1", "2", "!", ".", ",", "\u3000", "\u00a0", "\u0301", "\u0323", "一", "é", "\u2028", "\x0b",
          "\u0085", "😀", "\u200b", "Ⅻ", "\u1100", "\u1161", "\u11a8", "가", "<", "|", ">", "_", "’"]


def stress_string(rng):
    return "".join(rng.choice(STRESS) for _ in range(rng.randint(1, 24)))


def fixed_cases():
    cases = [
        "", "A cat", "Hello world", " Hello world", "A photo of a cat, 4k, ultra-detailed.", "1234567 apples",
        "I'm  here\n\n  ok   ", "don't DON'T It'S", "don't DON'T It'S 'Re", "café", "cafe\u0301",
        "tab\there\r\nCRLF", "x\u00a0y\u3000z", "😀👍🏽 ⚡️ done", "  two  spaces\tand tab\n\nnewline 2024年12月",
        "一幅为名为“造相「Z-IMAGE-TURBO」”的项目设计的创意海报。", "<think>hi</think>", "trailing  ", "  leading",
        "<|im_end|>\u0338x", "x \n y", "!!!\n\nx", "a,b", "\t\tx", "1 2  3", "a\u3000\u3000b",
        "A cute cyberpunk cat, neon lights, 8k high definition",
        "一幅为名为“造相「Z-IMAGE-TURBO」”的项目设计的创意海报。画面巧妙地将文字概念视觉化：一辆复古蒸汽小火车化身为巨大的拉链头，"
        "正拉开厚厚的冬日积雪，展露出一个生机盎然的春天。",
        " ", "\n", "\r\n", "\t", "'", "'s", "''s", "\u0301", "a\u0301", "\U0010ffff", "\x00", "\x00\x00a",
        " " * 5000, "a" * 3000, "\n" * 1000, " \n" * 500, "ab" * 2000, "😀" * 300, "。" * 400, "1" * 500,
        "!" * 700 + "\n" * 3, "x" + " " * 999 + "y", "\u0301" * 200, "e" + "\u0301\u0323" * 100,
        "".join(chr(0xAC00 + i * 37 % 11172) for i in range(600)), CJK_MODERN * 4, CJK_CLASSICAL * 5,
        " ".join(["cat"] * 600),
    ]
    cases += ADDED + ADDED_NEAR + COMBINING + NEW_UNICODE + CONTRACTIONS + WHITESPACE + NOT_WHITESPACE
    cases += ["".join(ADDED), " ".join(ADDED), "x".join(ADDED), "<|im_start|><|im_start|>", "<<|im_start|>>"]
    for p in ["A cat", "", "\nA cat", " A cat ", "<think>", "a\u0301", "😀"]:
        cases.append(PROMPT_PREFIX + p + PROMPT_SUFFIX)
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="folder with tokenizer.json (default: the vendored fixture)")
    ap.add_argument("--out", default=os.path.join(FIXTURES, "tokenizer_golden.json.xz"))
    ap.add_argument("--n-mixed", type=int, default=3500)
    ap.add_argument("--n-stress", type=int, default=2500)
    ap.add_argument("--n-random", type=int, default=500)
    ap.add_argument("--n-decode", type=int, default=400)
    args = ap.parse_args()

    if args.tokenizer:
        with open(os.path.join(args.tokenizer, "tokenizer.json"), "rb") as f:
            raw = f.read()
    else:
        with lzma.open(os.path.join(FIXTURES, "qwen3-tokenizer", "tokenizer.json.xz")) as f:
            raw = f.read()
    sha = hashlib.sha256(raw).hexdigest()
    tok = Tokenizer.from_str(raw.decode("utf-8"))

    rng = random.Random(SEED)
    texts = fixed_cases()
    texts += [mixed_string(rng) for _ in range(args.n_mixed)]
    texts += [stress_string(rng) for _ in range(args.n_stress)]
    texts += ["".join(rand_cp(rng) for _ in range(rng.randint(1, 40))) for _ in range(args.n_random)]
    seen, uniq = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            uniq.append(t)

    cases = []
    for t in uniq:
        enc = tok.encode(t)
        ids = enc.ids
        assert ids == tok.encode(t, add_special_tokens=False).ids
        case = {"text": t, "ids": ids}
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True)
        if dec != t:  # stored only where they differ, to keep the file small
            case["decoded"] = dec
        if dec_skip != dec:
            case["decoded_skip"] = dec_skip
        cases.append(case)

    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    decode_cases = []
    for _ in range(args.n_decode):
        ids = [rng.randrange(n_vocab) if rng.random() < 0.5 else rng.randrange(256) if rng.random() < 0.7
               else rng.randrange(151643, n_vocab) for _ in range(rng.randint(0, 12))]
        decode_cases.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                             "decoded_skip": tok.decode(ids, skip_special_tokens=True)})

    doc = {"tokenizers_version": tokenizers.__version__, "tokenizer_json_sha256": sha, "seed": SEED,
           "vocab_size": n_vocab, "cases": cases, "decode_cases": decode_cases}
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    with lzma.open(args.out, "wb", preset=9) as f:
        f.write(data)
    n_ids = sum(len(c["ids"]) for c in cases)
    print(f"wrote {args.out}: {len(cases)} strings ({n_ids} ids), {len(decode_cases)} decode cases, "
          f"tokenizers {tokenizers.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
