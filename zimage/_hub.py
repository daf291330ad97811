"""Resolve `from_pretrained("Tongyi-MAI/Z-Image-Turbo")` to a local folder in the diffusers
layout, the way a ModelScope / Hugging Face user's caches hold it, downloading only when
modelscope or huggingface_hub is installed."""
import os


def _is_model_dir(path):
    return os.path.isfile(os.path.join(path, "model_index.json"))


def _hf_snapshot(cache, repo_id):
    """A Hugging Face cache entry: models--org--name/snapshots/<rev>/ (refs/main first)."""
    base = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snaps = os.path.join(base, "snapshots")
    if not os.path.isdir(snaps):
        return None
    ref = os.path.join(base, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            rev = f.read().strip()
        cand = os.path.join(snaps, rev)
        if _is_model_dir(cand):
            return cand
    revs = [os.path.join(snaps, r) for r in os.listdir(snaps)]
    revs = [r for r in revs if _is_model_dir(r)]
    return max(revs, key=os.path.getmtime) if revs else None


def candidate_dirs(repo_id):
    """Every place looked at, in order, as (description, path or None)."""
    org_name = repo_id.split("/")
    out = []
    ms = os.environ.get("MODELSCOPE_CACHE")
    if ms:
        out.append(("$MODELSCOPE_CACHE/models", os.path.join(ms, "models", *org_name)))
        out.append(("$MODELSCOPE_CACHE", os.path.join(ms, *org_name)))
    ms_default = os.path.join(os.path.expanduser("~"), ".cache", "modelscope", "hub")
    out.append(("ModelScope default cache", os.path.join(ms_default, "models", *org_name)))
    out.append(("ModelScope default cache", os.path.join(ms_default, *org_name)))
    hf_caches = []
    if os.environ.get("HF_HUB_CACHE"):
        hf_caches.append(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        hf_caches.append(os.path.join(os.environ["HF_HOME"], "hub"))
    hf_caches.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"))
    for cache in hf_caches:
        out.append((f"Hugging Face cache {cache}", _hf_snapshot(cache, repo_id) or
                    os.path.join(cache, "models--" + repo_id.replace("/", "--"))))
    return out


def resolve(name_or_path, **kwargs):
    """Local folder for a path or a hub id; FileNotFoundError saying where it looked."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        if not _is_model_dir(path):
            raise FileNotFoundError(f"{path} has no model_index.json: not a diffusers pipeline folder")
        return path
    looked = []
    if path.count("/") == 1 and not path.startswith((".", "/")):
        for what, cand in candidate_dirs(path):
            looked.append(f"{what}: {cand}")
            if cand and _is_model_dir(cand):
                return cand
        if not kwargs.get("local_files_only"):
            revision = kwargs.get("revision")
            for module, rev in (("modelscope", revision or "master"), ("huggingface_hub", revision)):
                try:
                    download = __import__(module, fromlist=["snapshot_download"]).snapshot_download
                except (ImportError, AttributeError):
                    continue
                try:
                    got = download(path, revision=rev)
                except Exception as e:  # offline, unknown repo, no access: say so, with where we looked
                    looked.append(f"{module}.snapshot_download: failed ({type(e).__name__}: {str(e)[:200]})")
                    continue
                if _is_model_dir(got):
                    return got
                looked.append(f"{module}.snapshot_download: {got} has no model_index.json")
    raise FileNotFoundError(
        f"cannot find the model {path!r}. Looked in:\n  " + "\n  ".join(looked or [path]) +
        "\nDownload it first (pip install modelscope; modelscope download --model " + path +
        "), or pass a local folder in the diffusers layout (model_index.json, transformer/, text_encoder/, "
        "tokenizer/, vae/, scheduler/).")
