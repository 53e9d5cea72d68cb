"""bitsandbytes quantization (4-bit and int8 on CPU), LoRA on quantized weights, load_model and its checks."""

import copy
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lit_gpt.quantize
from lit_gpt.config import Config
from lit_gpt.load import load_model
from lit_gpt.lora import (
    LoRAConfig,
    add_lora,
    lora_filter,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora_weights,
    trainable_report,
)
from lit_gpt.model import GPT
from lit_gpt.moe import Experts
from lit_gpt.quantize import (
    QUANTIZE_MODES,
    Linear,
    check_quantize,
    dequantize_experts,
    dequantize_weight,
    linear,
    quantizable_weights,
    quantize_experts,
    quantize_mode,
    quantize_weight,
    replace_parameters,
    stored_bytes,
    weight_dtype,
)
from lit_gpt.rope import build_rope_cache
from lit_gpt.utils import UserError, atomic_save, atomic_write_text


@torch.no_grad()
def quantize_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The reference for load_model's quantization: a materialized model's linear weights and expert tensors
    quantized in place."""
    weights = quantizable_weights(model)
    replace_parameters(model, {key: w if quantize_mode(w) else quantize_weight(w, mode) for key, w in weights.items()})
    for module in model.modules():
        if isinstance(module, Experts):
            for name in ("gate_up_proj", "down_proj"):
                if not quantize_mode(getattr(module, name)):
                    setattr(module, name, quantize_experts(getattr(module, name), mode, module.transposed))
    return model


FOUR_BIT = [m for m in QUANTIZE_MODES if m != "bnb.int8"]


def tiny_config(**kwargs) -> Config:
    return Config(**{**dict(name="tiny-llama", n_layer=2, n_head=4, n_query_groups=2, n_embd=64, vocab_size=100,
                            padding_multiple=64, block_size=64, rotary_percentage=1.0, parallel_residual=False,
                            bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
                            intermediate_size=128), **kwargs})


def tokens(batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(1))


def randomize_lora(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora_filter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def bf16_lora_model(std: float = 0.01, **config_kwargs) -> GPT:
    torch.manual_seed(0)
    model = add_lora(GPT(tiny_config(**config_kwargs)), LoRAConfig()).to(torch.bfloat16).eval()
    randomize_lora(model, std)
    return model


def dequantized_copy(model: GPT, dtype: torch.dtype = torch.bfloat16) -> GPT:
    """The same model with every quantized weight replaced by its dequantized float matrix in `dtype` (the oracle)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Linear) and quantize_mode(module.weight):
            module.weight = torch.nn.Parameter(dequantize_weight(module.weight).to(dtype), requires_grad=False)
        if isinstance(module, Experts):
            for name in ("gate_up_proj", "down_proj"):
                if quantize_mode(getattr(module, name)):
                    float_weight = dequantize_experts(getattr(module, name)).to(dtype)
                    setattr(module, name, torch.nn.Parameter(float_weight, requires_grad=False))
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_quantized_forward_and_backward(mode):
    model = bf16_lora_model()
    x = tokens()
    reference = model(x)
    quantized = quantize_model(copy.deepcopy(model), mode)
    linears = [m for m in quantized.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 5 + 1 and all(quantize_mode(m.weight) == mode for m in linears)  # lm_head too
    assert quantized.transformer.wte.weight.dtype == torch.bfloat16
    out = quantized(x)
    # the quantized matmul computes x @ dequantize(W)^T: same logits as the dequantized float model
    torch.testing.assert_close(out, dequantized_copy(quantized)(x), rtol=1e-2, atol=1e-2)
    # and it stays close to the unquantized model: 4-bit ~10% relative error on random weights, int8 < 1%
    assert relative_error(out, reference) < (0.02 if mode == "bnb.int8" else 0.2)
    assert trainable_report(quantized).split("||")[1] == trainable_report(model).split("||")[1]  # unpacked count

    mark_only_lora_as_trainable(quantized)
    quantized.train()
    torch.manual_seed(0)  # the same LoRA dropout masks in both runs
    F.cross_entropy(quantized(x).flatten(0, 1).float(), x.flatten()).backward()
    oracle = dequantized_copy(quantized)
    for p in oracle.parameters():
        p.grad = None
    torch.manual_seed(0)
    F.cross_entropy(oracle(x).flatten(0, 1).float(), x.flatten()).backward()
    oracle_grads = dict(oracle.named_parameters())
    for name, param in quantized.named_parameters():
        if lora_filter(name):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert relative_error(param.grad, oracle_grads[name].grad) < 0.05, name  # bf16 rounding only
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_merge_into_quantized_weight_requantizes(mode):
    model = quantize_model(bf16_lora_model(std=0.01), mode)
    x = tokens()
    reference = quantize_model(copy.deepcopy(bf16_lora_model(std=0.0)), mode)(x)  # quantization error scale
    qkv = model.transformer.h[0].attn.qkv
    merged_weight = dequantize_weight(qkv.weight).float() + qkv.delta_weight()
    expected = quantize_weight(merged_weight.to(weight_dtype(qkv.weight)), mode)  # bf16 for 4-bit, int8: float
    unmerged = model(x)
    merge_lora_weights(model)
    assert quantize_mode(qkv.weight) == mode and qkv.merged
    assert torch.equal(qkv.weight.data, expected.data)  # dequantize, add, re-quantize
    scales = (qkv.weight.SCB, expected.SCB) if mode == "bnb.int8" else (qkv.weight.quant_state.absmax,
                                                                        expected.quant_state.absmax)
    assert torch.equal(*scales)
    merged = model(x)
    # re-quantizing W + dW costs far less than quantizing did (small dW stays on the same grid points mostly)
    quantization_error = relative_error(reference, bf16_lora_model(std=0.0)(x))
    assert relative_error(merged, unmerged) < max(quantization_error / 3, 0.01)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    merge_lora_weights(model)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def moe_lora_model(kind: str, dtype: torch.dtype = torch.bfloat16) -> GPT:
    """A tiny Qwen3-MoE (a dense layer, 4 experts of which 2), gpt-oss (transposed, interleaved experts with biases),
    Qwen3.5-MoE (a shared expert) or Gemma 4 with experts beside its MLP, with random LoRA on attention and experts."""
    from test_merge import CONFIGS

    torch.manual_seed(0)
    config = Config(**{**CONFIGS[kind], "name": f"tiny-{kind}", "n_layer": 3 if kind == "qwen3_moe" else 2,
                       "n_embd": 64, "moe_intermediate_size": 32, "vocab_size": 100, "padding_multiple": 64,
                       "block_size": 64})
    model = add_lora(GPT(config), LoRAConfig(r=4, alpha=8)).to(dtype).eval()
    randomize_lora(model, 0.02)
    return model


@pytest.mark.parametrize(("kind", "mode"), [*((k, m) for k in ("qwen3_moe", "gpt_oss") for m in QUANTIZE_MODES),
                                            ("qwen3_5_moe", "bnb.nf4"), ("gemma4-moe", "bnb.nf4-dq")])
def test_quantized_experts_forward_backward_and_merge(kind, mode):
    """Expert tensors quantized expert by expert: each expert's bytes and scales as `quantize_weight` gives for that
    expert's (out, in) matrix alone; the forward (each expert's matmul on its dequantized matrix) and the LoRA
    gradients as the dequantized float model's (in float32, where they agree to rounding); merging re-quantizes the
    merged experts."""
    model = moe_lora_model(kind, torch.float32)
    x = tokens()
    with torch.no_grad():  # a forward with gradients keeps the router logits, which deepcopy refuses
        reference = model(x)
    quantized = quantize_model(copy.deepcopy(model), mode)
    moe = "moe" if kind == "gemma4-moe" else "mlp"  # Gemma 4's experts beside its MLP
    experts = getattr(quantized.transformer.h[-1], moe).experts
    float_experts = getattr(model.transformer.h[-1], moe).experts
    for name in ("gate_up_proj", "down_proj"):
        weight, float_weight = getattr(experts, name), getattr(float_experts, name)
        assert quantize_mode(weight) == mode and weight.expert_shape == tuple(float_weight.shape)
        assert weight.dtype in (torch.uint8, torch.int8) and not weight.requires_grad
        for e in (0, 3):
            alone = quantize_weight(float_weight[e].T if experts.transposed else float_weight[e], mode)
            assert torch.equal(weight.experts[e].data, alone.data)
            assert torch.equal(weight[e], alone.data.view_as(weight[e]))  # the views of the packed bytes
        assert relative_error(dequantize_experts(weight), float_weight) < (0.02 if mode == "bnb.int8" else 0.15)
        assert stored_bytes(weight) == sum(stored_bytes(quantize_weight(w.T if experts.transposed else w, mode))
                                           for w in float_weight)  # bytes and each expert's scales
    size = sum(getattr(experts, n).numel() * getattr(experts, n).element_size() for n in ("gate_up_proj", "down_proj"))
    assert size < (0.3 if mode == "bnb.int8" else 0.15) * 4 * sum(
        getattr(float_experts, n).numel() for n in ("gate_up_proj", "down_proj"))
    assert trainable_report(quantized).split("||")[1] == trainable_report(model).split("||")[1]  # unpacked count
    if kind == "qwen3_5_moe":  # the shared expert's linears too
        assert quantize_mode(quantized.transformer.h[-1].mlp.shared_expert.fc_1.weight) == mode

    oracle = dequantized_copy(quantized, torch.float32)
    with torch.no_grad():
        out = quantized(x)  # bitsandbytes' CPU kernels may fuse dequantizing and the product (another rounding)
        torch.testing.assert_close(out, oracle(x), rtol=1e-4, atol=1e-4)
    assert relative_error(out, reference) < (0.05 if mode == "bnb.int8" else 0.3)

    for m in (quantized, oracle):
        mark_only_lora_as_trainable(m)
        m.train()
        torch.manual_seed(0)  # the same LoRA dropout masks
        F.cross_entropy(m(x).flatten(0, 1).float(), x.flatten()).backward()
    oracle_grads = dict(oracle.named_parameters())
    for name, param in quantized.named_parameters():
        if lora_filter(name):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert relative_error(param.grad, oracle_grads[name].grad) < 1e-4, name
        else:
            assert param.grad is None, name

    quantized.eval()
    with torch.no_grad():
        unmerged = quantized(x)
        expected = dequantize_experts(experts.down_proj).float() + experts.delta_weight("down")
        merge_lora_weights(quantized)
        assert experts.merged and quantize_mode(experts.down_proj) == mode
        requantized = quantize_experts(expected, mode, experts.transposed)
        assert torch.equal(experts.down_proj, requantized)
        assert relative_error(quantized(x), unmerged) < 0.1


@pytest.mark.parametrize("kind", ["qwen3_moe", "gpt_oss"])
def test_load_model_quantizes_experts_as_the_loaded_model(kind, tmp_path):
    base = moe_lora_model(kind)
    config = base.config
    float_model = GPT(config)
    float_model.load_state_dict({k: v for k, v in base.state_dict().items() if not lora_filter(k)}, strict=False)
    write_checkpoint(tmp_path / "ckpt", config, {k: v for k, v in base.state_dict().items() if not lora_filter(k)})
    model = load_model(tmp_path / "ckpt", precision="bf16-true", quantize="bnb.nf4-dq",
                       lora_config=LoRAConfig(r=4, alpha=8))
    assert quantize_mode(model.transformer.h[-1].mlp.experts.gate_up_proj) == "bnb.nf4-dq"
    assert model.transformer.h[-1].mlp.experts.lora_A_gate_up.dtype == torch.bfloat16
    expected = quantize_model(add_lora(copy.deepcopy(float_model), LoRAConfig(r=4, alpha=8)).to(torch.bfloat16),
                              "bnb.nf4-dq").eval()
    x = tokens()
    assert torch.equal(model(x), expected(x))  # LoRA B is zero in both


def test_tied_head_stays_float_and_shared():
    model = quantize_model(bf16_lora_model(tie_embeddings=True), "bnb.nf4")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.dtype == torch.bfloat16 and quantize_mode(model.lm_head.weight) is None
    assert quantize_mode(model.transformer.h[0].mlp.fc_1.weight) == "bnb.nf4"


@pytest.mark.parametrize("precision", ["bf16-true", "32-true", "bf16-mixed"])
def test_check_quantize_runs_every_mode_on_cpu(precision, monkeypatch):
    """Every mode passes on CPU, and passing means its kernels ran: a quantized forward in the precision's dtype that
    computes x @ dequantize(W)^T, and a backward that reached x. A kernel that raises is reported in one line."""
    probes = []

    def recorded_linear(x, weight, bias):
        out = linear(x, weight, bias)
        probes.append((x, weight, out))
        return out

    monkeypatch.setattr(lit_gpt.quantize, "linear", recorded_linear)
    for mode in (None, *QUANTIZE_MODES):
        assert check_quantize(mode, precision, "cpu") is None
    assert [quantize_mode(weight) for _, weight, _ in probes] == list(QUANTIZE_MODES)  # None: nothing to probe
    dtype = torch.float32 if precision == "32-true" else torch.bfloat16
    for x, weight, out in probes:
        w = dequantize_weight(weight).to(dtype)
        assert x.dtype == out.dtype == dtype and out.shape == (2, 64)
        tolerance = 0.02 if quantize_mode(weight) == "bnb.int8" else 0.01  # int8 also rounds x; 4-bit: dtype only
        assert relative_error(out, x @ w.T) < tolerance
        assert relative_error(x.grad, w.sum(0).expand_as(x)) < tolerance  # d sum(x @ W^T) / dx

    def broken_linear(x, weight, bias):
        raise RuntimeError("no kernel image for this device\nmore details")

    monkeypatch.setattr(lit_gpt.quantize, "linear", broken_linear)
    with pytest.raises(UserError) as error:
        check_quantize("bnb.nf4-dq", precision, "cpu")
    assert str(error.value) == (f"--quantize bnb.nf4-dq with precision {precision} does not run on cpu (RuntimeError: "
                                "no kernel image for this device); try no --quantize")


def test_check_quantize_rejects_with_what_works(monkeypatch):
    with pytest.raises(UserError, match=r"Unknown quantize mode 'bnb\.nf8'; choose one of bnb\.nf4, bnb\.nf4-dq"):
        check_quantize("bnb.nf8", "bf16-true", "cpu")
    with pytest.raises(UserError, match=r"Unknown precision 'bf16'; choose one of bf16-true, bf16-mixed"):
        check_quantize("bnb.nf4", "bf16", "cpu")
    with pytest.raises(UserError, match="16-mixed.*CPU: use --precision bf16-mixed or bf16-true"):
        check_quantize("bnb.nf4", "16-mixed", "cpu")
    with pytest.raises(UserError, match="bitsandbytes does not run on 'xla'"):
        check_quantize("bnb.nf4", "bf16-true", "xla")
    # the probe runs the kernels on the device and reports what failed in one line
    for device, available in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())):
        if not available:
            with pytest.raises(UserError, match=rf"bnb\.int8 with precision bf16-true does not run on {device} "
                                                r"\(.*\); try bnb\.nf4$") as error:
                check_quantize("bnb.int8", "bf16-true", device)
            assert len(str(error.value)) < 400
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # bitsandbytes not importable
    with pytest.raises(UserError, match="needs bitsandbytes.*pip install bitsandbytes"):
        check_quantize("bnb.nf4", "bf16-true", "cpu")
    check_quantize(None, "bf16-true", "cpu")  # no quantization: bitsandbytes not needed


def write_checkpoint(checkpoint_dir, config: Config, state_dict: dict = None) -> GPT:
    """A checkpoint dir (weights, lit_config.json, a real tokenizer.json) of a random model, which is returned."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    torch.manual_seed(0)
    model = GPT(config) if state_dict is None else None
    atomic_save(model.state_dict() if state_dict is None else state_dict, checkpoint_dir / "lit_model.pth")
    config.save(checkpoint_dir / "lit_config.json")
    Tokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(str(checkpoint_dir / "tokenizer.json"))
    return model.eval() if model is not None else None


@pytest.mark.parametrize("tie", [False, True])
def test_load_model_matches_the_model_it_was_saved_from(tmp_path, tie):
    config = tiny_config(tie_embeddings=tie)
    base = write_checkpoint(tmp_path / "ckpt", config)
    x = tokens()
    model = load_model(tmp_path / "ckpt", precision="32-true", lora_config=LoRAConfig(), max_seq_length=32)
    assert not model.training and model.max_seq_length == 32
    assert torch.equal(model(x), base(x))  # LoRA initialized as a no-op
    cos, sin = build_rope_cache(32, config.rope_n_elem, config.rope_base)
    assert model.cos.dtype == torch.float32 and torch.equal(model.cos, cos) and torch.equal(model.sin, sin)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie

    model = load_model(tmp_path / "ckpt", precision="bf16-true")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model(x), copy.deepcopy(base).to(torch.bfloat16)(x))

    model = load_model(tmp_path / "ckpt", precision="bf16-true", quantize="bnb.nf4-dq", lora_config=LoRAConfig())
    expected = quantize_model(add_lora(copy.deepcopy(base), LoRAConfig()).to(torch.bfloat16), "bnb.nf4-dq")
    assert torch.equal(model(x), expected.eval()(x))  # quantizing while loading = quantizing the loaded model
    assert quantize_mode(model.lm_head.weight) == (None if tie else "bnb.nf4-dq")
    assert model.transformer.h[1].attn.qkv.lora_A_query.dtype == torch.bfloat16
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())


def test_load_model_with_adapter_from_out_dir(tmp_path):
    config = tiny_config()
    write_checkpoint(tmp_path / "ckpt", config)
    lora_config = LoRAConfig(r=4, alpha=8, key=False, head=False)
    trained = load_model(tmp_path / "ckpt", precision="32-true", lora_config=lora_config)
    randomize_lora(trained, std=0.05)
    out_dir = tmp_path / "out"
    atomic_save(lora_state_dict(trained), out_dir / "lit_model_lora_finetuned.pth")
    run = {"lora": lora_config.to_dict(), "model": config.to_dict(), "checkpoint_dir": str(tmp_path / "ckpt")}
    atomic_write_text(out_dir / "lora_config.json", json.dumps(run))
    x = tokens()
    loaded = load_model(tmp_path / "ckpt", precision="32-true", lora_path=out_dir)  # settings from lora_config.json
    assert torch.equal(loaded(x), trained(x))
    assert not hasattr(loaded.transformer.h[0].attn.qkv, "lora_A_key")
    atomic_save({"adapter": lora_state_dict(trained)}, out_dir / "checkpoints" / "step-000010.pth")
    loaded = load_model(tmp_path / "ckpt", precision="32-true", lora_path=out_dir / "checkpoints" / "step-000010.pth")
    assert torch.equal(loaded(x), trained(x))  # a training checkpoint: lora_config.json found one level up
    loaded = load_model(tmp_path / "ckpt", precision="bf16-true", quantize="bnb.nf4", lora_path=out_dir)
    assert relative_error(loaded(x), trained(x)) < 0.2

    with pytest.raises(UserError, match=r"'transformer\.h\.0\.attn\.qkv\.lora_A_query' has shape \(4, 64\) in the "
                                        r"adapter but \(8, 64\) in the model"):
        load_model(tmp_path / "ckpt", lora_path=out_dir, lora_config=LoRAConfig(key=False, head=False))
    with pytest.raises(UserError, match="No adapter at"):
        load_model(tmp_path / "ckpt", lora_path=tmp_path / "nowhere")


def test_load_model_checks_inputs_first(tmp_path):
    with pytest.raises(UserError, match="Unknown quantize mode"):  # before looking at the (missing) checkpoint dir
        load_model(tmp_path / "missing", quantize="nf4")
    with pytest.raises(UserError, match="has no lit_model.pth"):
        load_model(tmp_path)
    write_checkpoint(tmp_path / "ckpt", tiny_config())
    with pytest.raises(UserError, match="max_seq_length=65 must be between 1 and the model's block_size=64"):
        load_model(tmp_path / "ckpt", max_seq_length=65)
    other = tiny_config(n_embd=32)
    other.save(tmp_path / "ckpt" / "lit_config.json")  # config and weights of different models
    with pytest.raises(UserError, match=r"'lm_head\.weight' has shape \(128, 64\) in the checkpoint but "
                                        r"\(128, 32\) in the model"):
        load_model(tmp_path / "ckpt", quantize="bnb.nf4")


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_load_model_with_fabric(tmp_path, precision):
    import lightning as L

    write_checkpoint(tmp_path / "ckpt", tiny_config())
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    model = load_model(tmp_path / "ckpt", precision=precision, quantize="bnb.nf4", device=fabric.device,
                       lora_config=LoRAConfig())
    mark_only_lora_as_trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    model.train()
    x = tokens()
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), x.roll(1, dims=1).flatten())
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the LoRA weights of a 4-bit model train
    assert quantize_mode(model.module.transformer.h[0].mlp.fc_2.weight) == "bnb.nf4"


def rss_anon() -> int:
    """Resident anonymous memory: what the process allocated, not the pages of memory-mapped files."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def peak_memory_increase(fn) -> tuple:
    """(result of fn(), peak increase of anonymous memory while it ran), sampled every ~0.5 ms by a thread."""
    start, peak, stop = rss_anon(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    return result, max(peak[0], rss_anon()) - start


def test_load_model_nf4_peak_memory_below_bf16_size(tmp_path):
    """Loading an nf4 model (~60M params) never holds the bf16 model: peak anonymous memory is measured."""
    # glibc (in the child): blocks of 64 KiB and more come from mmap and go back to the OS when freed
    config = Config(name="mid", n_layer=8, n_head=12, n_query_groups=4, n_embd=768, vocab_size=8192,
                    padding_multiple=64, block_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=2048)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator, dtype=torch.bfloat16) * 0.02 for k, s in shapes.items()}
    bf16_size = sum(t.numel() for t in state.values()) * 2
    write_checkpoint(tmp_path / "ckpt", config, state)  # random weights: GPT's init of 60M params is slower
    del state
    # measured in a fresh process: memory freed by earlier tests would hide the growth
    code = f"""
import ctypes, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # -3: M_MMAP_THRESHOLD
from test_quantize import peak_memory_increase
from lit_gpt.lora import LoRAConfig
from lit_gpt.load import load_model
from lit_gpt.quantize import check_quantize
check_quantize("bnb.nf4", "bf16-true", "cpu")  # bitsandbytes imported and warmed up before measuring
model, nf4 = peak_memory_increase(lambda: load_model({str(tmp_path / "ckpt")!r}, quantize="bnb.nf4",
                                                     lora_config=LoRAConfig()))
nf4_size = sum(p.numel() * p.element_size() for p in model.parameters())
del model
model, bf16 = peak_memory_increase(lambda: load_model({str(tmp_path / "ckpt")!r}, lora_config=LoRAConfig()))
print(nf4, nf4_size, bf16)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nf4, nf4_size, bf16 = map(int, proc.stdout.split()[-3:])
    print(f"bf16 size {bf16_size / 2**20:.0f} MiB, nf4 model {nf4_size / 2**20:.0f} MiB; peak while loading: "
          f"nf4 {nf4 / 2**20:.0f} MiB, bf16 {bf16 / 2**20:.0f} MiB")
    assert bf16 > 0.9 * bf16_size and nf4 > 0.9 * nf4_size  # the measurement sees the models being built
    assert nf4 < 0.6 * bf16_size  # ~0.5 bytes per linear weight + the bf16 embedding, a chunk of a layer at a time


def test_chunked_quantization_equals_bitsandbytes_whole(monkeypatch):
    import bitsandbytes as bnb

    monkeypatch.setattr(lit_gpt.quantize, "CHUNK_VALUES", 1000)  # many chunks, some with a partial block at the end
    generator = torch.Generator().manual_seed(0)
    for shape in [(100, 72), (129, 30), (7, 6), (256, 64)]:  # (odd widths: a slow torch.compile path)
        weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
        for mode in QUANTIZE_MODES:
            ours = quantize_weight(weight, mode)
            if mode == "bnb.int8":
                CB, SCB, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
                assert torch.equal(ours.data, CB) and torch.equal(ours.SCB, SCB)
                continue
            data, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=mode.endswith("-dq"),
                                                       quant_type=mode[4:7])
            assert torch.equal(ours.data, data) and torch.equal(ours.quant_state.absmax, state.absmax), (shape, mode)
            assert torch.equal(dequantize_weight(ours), bnb.functional.dequantize_4bit(data, state)), (shape, mode)
            assert ours.quant_state.nested == state.nested and ours.quant_state.dtype == torch.bfloat16
            if state.nested:
                assert torch.equal(ours.quant_state.offset, state.offset)
                assert torch.equal(ours.quant_state.state2.absmax, state.state2.absmax)


def test_smollm2_nf4_close_to_bf16_and_trains(smollm2_dir):
    """The real 135M model: nf4 predicts like bf16, and a few QLoRA steps lower the loss."""
    from lit_gpt.tokenizer import Tokenizer

    text = ("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome. "
            "Water boils at one hundred degrees Celsius at sea level.")
    ids = Tokenizer(smollm2_dir).encode(text, bos=False)[None]  # (1, T)
    bf16 = load_model(smollm2_dir, precision="bf16-true", max_seq_length=64)
    with torch.no_grad():
        reference = bf16(ids[:, :-1]).float()
    del bf16
    model = load_model(smollm2_dir, precision="bf16-true", quantize="bnb.nf4", lora_config=LoRAConfig(),
                       max_seq_length=64)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: the head stays bf16
    with torch.no_grad():
        logits = model(ids[:, :-1]).float()
    loss_bf16 = F.cross_entropy(reference[0], ids[0, 1:])
    loss_nf4 = F.cross_entropy(logits[0], ids[0, 1:])
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    print(f"SmolLM2 loss bf16 {loss_bf16:.3f} nf4 {loss_nf4:.3f}, top-1 agreement {agreement:.2f}")
    assert loss_bf16 < 3 and abs(loss_nf4 - loss_bf16) < 0.25 * loss_bf16 and agreement > 0.75

    mark_only_lora_as_trainable(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(ids[:, :-1])[0].float(), ids[0, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
