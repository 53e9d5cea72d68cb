"""Checkpoint reading, atomic writes, user-facing errors, parameter counts, peak memory and a chunked cross-entropy."""

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import torch
import torch.nn as nn


class UserError(Exception):
    """A mistake the user can fix: scripts print its one-line message and exit with status 1."""


def fail(message: str) -> None:
    raise UserError(message)


def cli(function: Any, **kwargs: Any) -> Any:
    """`jsonargparse.CLI(function)` that turns a `UserError` into a one-line message and exit status 1.

    A parameter of `function` annotated with a dataclass, whose default is an instance of it (a finetune script's
    hyperparameters), becomes one flag per field (`--learning_rate`, not `--hp.learning_rate`), defaulting to that
    instance's values."""
    from jsonargparse import CLI, ArgumentParser

    groups = {name: p for name, p in inspect.signature(function).parameters.items()
              if dataclasses.is_dataclass(p.annotation) and isinstance(p.default, p.annotation)}
    try:
        if not groups:
            return CLI(function, **kwargs)
        parser = ArgumentParser(description=(function.__doc__ or "").split("\n\n")[0], **kwargs)
        parser.add_function_arguments(function, skip=set(groups), nested_key=None)
        for p in groups.values():
            parser.add_class_arguments(p.annotation, nested_key=None)
            parser.set_defaults({f.name: getattr(p.default, f.name) for f in dataclasses.fields(p.annotation)})
        for action in parser._actions:  # every flag has a default now: none is required
            action.required = False
        values = parser.parse_args().as_dict()
        values.pop("config", None)
        for name, p in groups.items():
            values[name] = p.annotation(**{f.name: values.pop(f.name) for f in dataclasses.fields(p.annotation)})
        return function(**values)
    except UserError as e:
        print(f"error: {shorten(one_line(str(e)), 600)}", file=sys.stderr)
        raise SystemExit(1)


def one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_line(e: BaseException, limit: int = 120) -> str:
    """`ExceptionType: first sentence of its message`, cut to `limit` characters, to quote in a one-line error."""
    lines = str(e).strip().splitlines()
    sentence = lines[0].strip().split(". ")[0] if lines else ""
    return shorten(f"{type(e).__name__}: {sentence}" if sentence else type(e).__name__, limit)


def read_json(path: Union[str, Path], fix: str) -> dict:
    """The JSON object in `path`. A file that cannot be read, is not valid JSON or holds no object is a one-line
    `UserError` naming it, ending in `fix` (what to do)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        fail(f"{str(path)!r} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {fix}")
    except UnicodeDecodeError:
        fail(f"{str(path)!r} is not UTF-8 text, so not valid JSON; {fix}")
    except OSError as e:
        fail(f"Cannot read {str(path)!r} ({e.strerror or type(e).__name__}); {fix}")
    if not isinstance(data, dict):
        fail(f"{str(path)!r} holds a JSON {_JSON_TYPES.get(type(data), type(data).__name__)}, not an object; {fix}")
    return data


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def dataclass_from_json(cls: type, data: Any, path: Union[str, Path], fix: str, key: str = "",
                        **overrides: Any) -> Any:
    """`cls(**data, **overrides)` for the fields `data` of a dataclass read from the JSON file `path` (its `key`).

    An unknown field, a value of the wrong type (by the field's annotation) or one `cls` rejects is a one-line
    `UserError` naming the file and the field, ending in `fix`."""
    where, prefix = f"{str(path)!r}" + (f": {key!r}" if key else ""), f"{key}." if key else ""
    if not isinstance(data, dict):
        fail(f"{where} is not a JSON object of {cls.__name__} fields; {fix}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [repr(prefix + name) for name in data if name not in known]
    if unknown:
        fail(f"{str(path)!r} has unknown {cls.__name__} field{'s' if len(unknown) > 1 else ''} "
             f"{shorten(', '.join(unknown), 100)}; {fix}")
    for name, value in data.items():
        if not _fits(value, hints[name]):
            fail(f"{str(path)!r}: {prefix}{name}={shorten(repr(value), 60)} is not {_type_name(hints[name])}; {fix}")
    try:
        return cls(**{**data, **overrides})
    except (UserError, ValueError, TypeError, AssertionError, ArithmeticError) as e:
        fail(f"{where} is not a valid {cls.__name__} ({first_line(e)}); {fix}")


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a type annotation (int for float too, a list for a tuple; bool is not a number)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if annotation is Any:
        return True
    if annotation in (int, float) and isinstance(value, bool):
        return False
    kind = origin or annotation
    return isinstance(value, {float: (int, float), tuple: (list, tuple)}.get(kind, kind))


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return " or ".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    return "null" if annotation is type(None) else getattr(origin or annotation, "__name__", str(annotation))


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_dir(path: Union[str, Path]) -> Iterator[Path]:
    """Yields a new temporary dir next to `path`, renamed onto `path` only if the block succeeds (else removed).

    `path` must not exist or be an empty dir. The dir and its files get the usual permissions (umask applied).
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        fail(f"{str(path)!r} already exists and is not empty: remove it or choose another output dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = _umask()
        for file in tmp.rglob("*"):
            file.chmod((0o777 if file.is_dir() else 0o666) & ~umask)  # mkdtemp/mkstemp create them private
        tmp.chmod(0o777 & ~umask)
        os.replace(tmp, path)  # replaces an empty dir too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def lazy_load(path: Union[str, Path]) -> dict:
    """Memory-maps a `torch.save`d state dict: tensors are read from disk only when used."""
    path = Path(path)
    if not path.is_file():
        fail(f"No such checkpoint file: {str(path)!r}")
    fix = "download or convert it again (scripts/download.py --force)" if path.name == "lit_model.pth" else \
        "write it again (finetune/lora.py)"
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # a truncated file: RuntimeError (no zip directory) or OSError (mmap past the end)
        fail(f"Could not read {str(path)!r} ({first_line(e, 100)}): corrupt or truncated? {fix}")


def file_sha256(path: Union[str, Path]) -> str:
    """The hex sha256 of a file's bytes, read 16 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def check_valid_checkpoint_dir(checkpoint_dir: Union[str, Path], model_filename: str = "lit_model.pth") -> Path:
    """Fails with the missing file and the commands that would create it."""
    checkpoint_dir = Path(checkpoint_dir)
    files = {model_filename: (checkpoint_dir / model_filename).is_file(),
             "lit_config.json": (checkpoint_dir / "lit_config.json").is_file(),
             "tokenizer.json or tokenizer.model": (checkpoint_dir / "tokenizer.json").is_file()
             or (checkpoint_dir / "tokenizer.model").is_file()}
    missing = [name for name, ok in files.items() if not ok]
    if not missing:
        return checkpoint_dir
    if not checkpoint_dir.is_dir():
        problem = f"checkpoint dir {str(checkpoint_dir)!r} does not exist"
    else:
        problem = f"checkpoint dir {str(checkpoint_dir)!r} has no {', '.join(missing)}"
    repo_id = "/".join(checkpoint_dir.parts[-2:]) if len(checkpoint_dir.parts) >= 2 else "<org>/<name>"
    fail(f"{problem}. Create it with: python scripts/download.py --repo_id {repo_id} --checkpoint_dir "
         f"{checkpoint_dir} (or, for weights already there: python scripts/convert_hf_checkpoint.py "
         f"--checkpoint_dir {checkpoint_dir})")
    return checkpoint_dir


def num_parameters(module: nn.Module, requires_grad: Optional[bool] = None) -> int:
    """Counts parameters (each shared tensor once); bitsandbytes 4-bit weights (and quantized experts) count as their
    unpacked size."""
    total, seen = 0, set()
    for p in module.parameters():
        if id(p) in seen or (requires_grad is not None and p.requires_grad != requires_grad):
            continue
        seen.add(id(p))
        quant_state, shape = getattr(p, "quant_state", None), getattr(p, "expert_shape", None)
        total += (math.prod(shape) if shape is not None else quant_state.shape.numel() if quant_state is not None
                  else p.numel())
    return total


def peak_memory_gb(device: Union[str, torch.device]) -> float:
    """Peak memory of this process in GB (1e9 bytes): the CUDA allocator's peak on a GPU, else the peak resident set
    size (which counts memory-mapped checkpoint pages that were read)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9  # bytes on macOS, kilobytes on Linux


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 32,
                          ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Mean (or, `reduction="sum"`, summed) cross-entropy over non-ignored targets, in float32 whatever the logits'
    dtype. logits: (B, T, V) or (N, V), targets: (B, T) or (N,).

    `chunk_size` rows of logits are upcast at a time, in both passes: the forward pass keeps only each row's
    log-sum-exp, the backward pass writes softmax - one-hot straight into the logits' gradient. No float32 copy of
    the whole logits and no log-softmax of them are ever held, and each chunk is read once a pass, where an upcast
    `F.cross_entropy` recomputed in backward (what this replaced) makes several passes over float32 copies: with
    SmolLM2's 49k vocabulary, 836 rows in bf16, forward + backward 60-70 ms vs 270 ms for that on a 2-core AMX Xeon.
    """
    logits = logits.reshape(-1, logits.size(-1))
    targets = targets.reshape(-1)
    total = _ChunkedCrossEntropy.apply(logits, targets, ignore_index, chunk_size)
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp(min=1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of `chunked_cross_entropy`, with its hand-written backward pass."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_size: int) -> torch.Tensor:
        valid = targets != ignore_index
        index = torch.where(valid, targets, 0)[:, None]  # (N, 1): an ignored row reads column 0, weighted 0
        lse = logits.new_empty(logits.size(0), dtype=torch.float32)
        picked = torch.empty_like(lse)
        for start in range(0, logits.size(0), chunk_size):
            rows = slice(start, start + chunk_size)
            z = logits[rows].float()
            lse[rows] = torch.logsumexp(z, dim=-1)
            picked[rows] = z.gather(1, index[rows])[:, 0]
        ctx.save_for_backward(logits, index, valid, lse)
        ctx.chunk_size = chunk_size
        return torch.where(valid, lse - picked, 0).sum()

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple:
        logits, index, valid, lse = ctx.saved_tensors
        weight = valid * grad_total.float()  # (N,): d loss / d row loss
        grad = torch.empty_like(logits)
        for start in range(0, logits.size(0), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            z = logits[rows].to(torch.float32, copy=True).sub_(lse[rows, None]).exp_()  # softmax
            z.scatter_add_(1, index[rows], z.new_full((z.size(0), 1), -1.0))  # - one-hot
            grad[rows] = z.mul_(weight[rows, None])
        return grad, None, None, None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Linux: the `amx_bf16` flag in /proc/cpuinfo; False elsewhere)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def fastest_precision(device: Union[str, torch.device]) -> str:
    """The precision whose matmuls run fastest on `device`: bf16-true on GPUs with bf16, 16-mixed on older GPUs;
    on CPUs bf16-true where bf16 matmuls are faster than float32 ones (`cpu_bf16_is_faster`), else 32-true."""
    if torch.device(device).type == "cuda":
        # a T4 or V100 only emulates bf16 (slowly): 16-mixed there
        return "bf16-true" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    return "bf16-true" if cpu_bf16_is_faster() else "32-true"


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_faster() -> bool:
    """Whether this CPU multiplies bf16 matrices at least 1.5x as fast as float32 ones: with AMX, yes; otherwise
    measured once per process (~0.1 s), as the flags do not tell: a 2-core AMD EPYC (Zen 4, avx512_bf16) ran 1024^3
    bf16 matmuls 4x faster than float32, a 2-core Xeon with the same flag at half the float32 speed (bf16 converted
    to float32 first)."""
    if cpu_has_amx():
        return True
    return matmul_seconds(torch.bfloat16) * 1.5 < matmul_seconds(torch.float32)


def matmul_seconds(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """The fastest of `repeats` (n, n) x (n, n) CPU matmuls in `dtype`, after one warm-up."""
    a = torch.randn(n, n).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return best


def response_loss(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                  ignore_index: int = -100, reduction: str = "mean", lengths: Optional[list] = None) -> torch.Tensor:
    """Mean (or summed) cross-entropy of a `GPT` over the positions with a target. The LM head runs on those positions
    only: on prompt and padding positions, which the loss ignores, its logits would be computed for nothing.
    `lengths`: input_ids is a packed row of examples of these lengths (`lit_gpt.data.pack`)."""
    at = targets != ignore_index
    logits = model(input_ids, logits_at=at, lengths=lengths)
    return chunked_cross_entropy(logits, targets[at], ignore_index=ignore_index, reduction=reduction)


def pick_device(device: Optional[str] = None) -> torch.device:
    """The device a script runs its model on, from its `--device` flag: "auto" or None: the first CUDA GPU when there
    is one, else the CPU; "cpu"; "cuda" (the current GPU) or "cuda:N". A device that is not here is a one-line
    `UserError` saying what to pass instead."""
    if device in (None, "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError):
        picked = None
    if picked is None or picked.type not in ("cpu", "cuda"):
        fail(f"--device {device}: not a device this project runs on; use auto, cpu, cuda or cuda:N")
    if picked.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device is available here; use --device cpu")
    count = torch.cuda.device_count()
    if picked.index is not None and picked.index >= count:
        fail(f"--device {device}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
             f"(cuda:0{f' ... cuda:{count - 1}' if count > 1 else ''}); use one of them or --device cpu")
    return torch.device("cuda", torch.cuda.current_device() if picked.index is None else picked.index)


def inference_precision(device: Union[str, torch.device]) -> str:
    """The default precision of a script that only runs a model (generate, chat, eval): `fastest_precision`, with
    half-precision weights instead of float32 weights + autocast on GPUs without bf16 (no training: no grad scaler)."""
    return fastest_precision(device).replace("-mixed", "-true")
