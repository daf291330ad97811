"""The `zimage` command line and examples/batch_run.py against the tiny pipeline, found by its
hub id through MODELSCOPE_CACHE, in fresh processes."""
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, env_extra, cwd):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def read_png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_cli_generates_and_reports(tiny_pipeline, tmp_path):
    cache, hub_id, _ = tiny_pipeline
    out = tmp_path / "cat.png"
    r = run(["-m", "zimage", "--model", hub_id, "--prompt", "一只猫", "--height", "64", "--width", "48",
             "--steps", "2", "--output", str(out), "--device", "cpu"], {"MODELSCOPE_CACHE": cache}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Prompt: 一只猫" in r.stdout and str(out) in r.stdout and "saved" in r.stdout
    assert read_png_size(out) == (48, 64)


def test_cli_prompts_file_one_pipeline(tiny_pipeline, tmp_path):
    cache, hub_id, _ = tiny_pipeline
    pf = tmp_path / "prompts.txt"
    pf.write_text("a fox\n\na lighthouse\n一只熊猫\n", encoding="utf-8")
    r = run(["-m", "zimage", "--model", hub_id, "--prompts-file", str(pf), "--height", "32", "--width", "32",
             "--steps", "1", "--output", str(tmp_path / "o.png")], {"MODELSCOPE_CACHE": cache}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Loading") == 1
    for i in (1, 2, 3):
        assert read_png_size(tmp_path / f"o_{i}.png") == (32, 32)
    import zimage
    if zimage.cuda_device_count() == 0:  # no --device and no GPU: it says it falls back to the slow CPU
        assert "warning" in r.stderr and "slow" in r.stderr


def test_cli_bad_arguments(tiny_pipeline, tmp_path):
    cache, hub_id, _ = tiny_pipeline
    env = {"MODELSCOPE_CACHE": cache}
    r = run(["-m", "zimage", "--model", hub_id, "--height", "40", "--steps", "1"], env, tmp_path)
    assert r.returncode == 1 and "divisible by 16" in r.stderr
    r = run(["-m", "zimage", "--model", "Nobody/Nothing"], env, tmp_path)
    assert r.returncode == 1 and "cannot find the model" in r.stderr
    r = run(["-m", "zimage", "--steps", "0"], env, tmp_path)
    assert r.returncode == 2 and "--steps" in r.stderr
    r = run(["-m", "zimage", "--prompts-file", str(tmp_path / "none.txt")], env, tmp_path)
    assert r.returncode == 2 and "prompts-file" in r.stderr
    r = run(["-m", "zimage", "--height", "abc"], env, tmp_path)
    assert r.returncode == 2


def test_batch_run_example(tiny_pipeline, tmp_path):
    cache, hub_id, _ = tiny_pipeline
    r = run([os.path.join(ROOT, "examples", "batch_run.py"), "--model", hub_id, "--height", "32", "--width", "64",
             "--steps", "1", "--out", str(tmp_path)], {"MODELSCOPE_CACHE": cache}, tmp_path)
    assert r.returncode == 0, r.stderr
    sizes = [read_png_size(tmp_path / f"batch_{i}.png") for i in (1, 2, 3)]
    assert sizes == [(64, 32)] * 3
    imgs = [open(tmp_path / f"batch_{i}.png", "rb").read() for i in (1, 2, 3)]
    assert len(set(imgs)) == 3  # different prompts and seeds give different images
