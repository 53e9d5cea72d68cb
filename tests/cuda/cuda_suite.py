"""Imported first by every module of the CUDA suite: without a CUDA device the module is skipped, with the reason
printed (`pytest tests/cuda -rs`), before anything that needs a GPU is imported.

(Not a tests/cuda/conftest.py: a second conftest.py in a folder without __init__.py takes the module name `conftest`
and breaks the suite's `from conftest import run_script`.)"""

import re

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device here (torch.cuda.is_available() is False): tests/cuda runs on a GPU only",
                allow_module_level=True)


def peak_memory(text: str, pattern: str = r"[Pp]eak mem(?:ory)?:? ([\d.]+) GB") -> float:
    """The last peak memory (GB) a script printed."""
    found = re.findall(pattern, text)
    assert found, f"no peak memory in {text[-2000:]!r}"
    return float(found[-1])
