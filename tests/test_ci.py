"""tests/conftest.py under CI=true: a test or module skipped for want of an oracle fails; other skips stay skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# peft and xllamacpp made unimportable (None in sys.modules), as where they are not installed
MISSING = "import sys\nimport pytest\nsys.modules['peft'] = sys.modules['xllamacpp'] = None\n"
FILES = {
    "test_module.py": MISSING + "pytest.importorskip('peft')\n\ndef test_in_module():\n    pass\n",
    "test_tests.py": MISSING + "def test_oracle():\n    pytest.importorskip('xllamacpp')\n\n"
                     "def test_gpu():\n    pytest.skip('no CUDA device here')\n\ndef test_plain():\n    pass\n",
}


def run_pytest(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    """pytest on FILES with tests/conftest.py as a plugin, the environment's CI=`ci` ("": no CI variable)."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(Path(__file__).parent)
    if ci:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-rsfE", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", *FILES], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("ci", ["", "false"])
def test_outside_ci_a_missing_oracle_skips(tmp_path, ci):
    proc = run_pytest(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("1 passed, 3 skipped in "), proc.stdout
    assert "SKIPPED [1] test_module.py:4: could not import 'peft'" in proc.stdout
    assert "SKIPPED [1] test_tests.py:5: could not import 'xllamacpp'" in proc.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_oracle_fails(tmp_path, ci):
    proc = run_pytest(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    # the module's skip is a collection error, the test's a failure; test_gpu stays skipped, test_plain passes
    assert proc.stdout.splitlines()[-1].startswith("1 failed, 1 passed, 1 skipped, 1 error in "), proc.stdout
    assert "\nERROR test_module.py - " in proc.stdout and "\nFAILED test_tests.py::test_oracle - " in proc.stdout
    assert "test_module.py:4: could not import 'peft'" in proc.stdout
    assert "in CI every oracle suite runs: install requirements-test.txt" in proc.stdout
    assert "SKIPPED [1] test_tests.py:8: no CUDA device here" in proc.stdout
