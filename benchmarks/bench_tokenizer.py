#!/usr/bin/env python3
"""Time zimage.Qwen2Tokenizer against HF `tokenizers` on the same inputs (HF is skipped when not
installed): load, one templated prompt (what the pipeline does per image), the golden strings
one call each, one long multilingual document, and decode.

    python benchmarks/bench_tokenizer.py [--tokenizer DIR] [--repeat N]

DIR defaults to the vendored tests/fixtures/qwen3-tokenizer (unpacked to a temp dir). Every
encode is also checked for equal ids. Timings are single-threaded wall clock, best of N.
"""
import argparse
import json
import lzma
import os
import shutil
import tempfile
import time

import zimage

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
Qwen2Tokenizer = getattr(zimage, "Qwen2Tokenizer", None) or zimage._zimage.Qwen2Tokenizer
PROMPT = "A cute cyberpunk cat, neon lights, 8k high definition"


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="folder with tokenizer.json (default: the vendored fixture)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    try:
        from tokenizers import Tokenizer
        import tokenizers
    except ImportError:
        Tokenizer = None

    tmp = None
    d = args.tokenizer
    if not d:
        tmp = d = tempfile.mkdtemp()
        with lzma.open(os.path.join(FIXTURES, "qwen3-tokenizer", "tokenizer.json.xz")) as f, \
                open(os.path.join(d, "tokenizer.json"), "wb") as g:
            shutil.copyfileobj(f, g)
        shutil.copy(os.path.join(FIXTURES, "qwen3-tokenizer", "tokenizer_config.json"), d)
    with lzma.open(os.path.join(FIXTURES, "tokenizer_golden.json.xz")) as f:
        texts = [c["text"] for c in json.loads(f.read())["cases"]]
    document = "\n".join(texts)  # ~1 MB of mixed scripts, code, emoji, whitespace runs
    n_bytes = len(document.encode())

    rows = []
    t_load, ours = best(lambda: Qwen2Tokenizer.from_pretrained(d), args.repeat)
    hf = None
    if Tokenizer:
        t_load_hf, hf = best(lambda: Tokenizer.from_file(os.path.join(d, "tokenizer.json")), args.repeat)
    rows.append(("load tokenizer.json", t_load, t_load_hf if hf else None, "s"))

    # one templated prompt, as the pipeline encodes it (per-call latency)
    n = 2000
    t, ids = best(lambda: [ours.encode_prompt(PROMPT) for _ in range(n)][-1], args.repeat)
    text = ours.format_prompt(PROMPT)
    if hf:
        t_hf, ids_hf = best(lambda: [hf.encode(text).ids for _ in range(n)][-1], args.repeat)
        assert ids == ids_hf[:512]
    rows.append((f"prompt ({len(ids)} ids), per call", t / n * 1e6, t_hf / n * 1e6 if hf else None, "us"))

    # the golden strings, one call each
    t, ids = best(lambda: [ours.encode(s) for s in texts], args.repeat)
    if hf:
        t_hf, ids_hf = best(lambda: [e.ids for e in (hf.encode(s) for s in texts)], args.repeat)
        assert ids == ids_hf
    rows.append((f"{len(texts)} strings, one call each", t, t_hf if hf else None, "s"))

    # one long document (throughput)
    t, ids = best(lambda: ours.encode(document), args.repeat)
    if hf:
        t_hf, ids_hf = best(lambda: hf.encode(document).ids, args.repeat)
        assert ids == ids_hf
    rows.append((f"document {n_bytes / 1e6:.2f} MB -> {len(ids)} ids", t, t_hf if hf else None, "s"))

    t, out = best(lambda: ours.decode(ids), args.repeat)
    if hf:
        t_hf, out_hf = best(lambda: hf.decode(ids, skip_special_tokens=False), args.repeat)
        assert out == out_hf
    rows.append((f"decode {len(ids)} ids", t, t_hf if hf else None, "s"))

    print(f"zimage Qwen2Tokenizer vs HF tokenizers {tokenizers.__version__ if hf else '(not installed)'}, "
          f"best of {args.repeat}, single thread")
    print(f"{'case':44s} {'zimage':>12s} {'HF':>12s} {'HF/zimage':>10s}")
    for name, a, b, unit in rows:
        bs = f"{b:10.4f} {unit}" if b is not None else f"{'-':>12s}"
        ratio = f"{b / a:9.2f}x" if b is not None else ""
        print(f"{name:44s} {a:10.4f} {unit} {bs} {ratio}")
    print(f"document throughput: zimage {n_bytes / rows[3][1] / 1e6:.1f} MB/s"
          + (f", HF {n_bytes / rows[3][2] / 1e6:.1f} MB/s" if hf else ""))
    if tmp:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
