"""Our nf4 SmolLM2-135M-Instruct on the GPU against transformers + bitsandbytes' `load_in_4bit` (nf4, bf16 compute) on
the same weights (our checkpoint exported with lit_gpt.convert.export_hf_checkpoint).

Both quantize the same bf16 weights with the same bitsandbytes kernel (blocks of 64, uint8 storage), so the 4-bit
weights must be identical, byte for byte. The logits then differ only as the two bf16 implementations of the model
differ: the tolerance is measured, not made up. `limit` = 2 x the max |diff| of the plain bf16 models + 0.05, which
must stay well under what nf4 itself changes (its max |diff| from the float32 model)."""

from cuda_suite import peak_memory  # noqa: F401, I001 (first: skips this module without a GPU)

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.convert import export_hf_checkpoint, load_lit_state_dict
from lit_gpt.load import load_model
from lit_gpt.tokenizer import Tokenizer

TEXT = ("<|im_start|>user\nA farmer has 17 sheep and buys 5 more. How many sheep does he have? Explain step by step."
        "<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def hf_dir(smollm2_dir, tmp_path_factory):
    """The checkpoint exported in bf16: transformers quantizes exactly the values our bf16-true load_model does."""
    state_dict = {name: t.to(torch.bfloat16) for name, t in load_lit_state_dict(smollm2_dir).items()}
    return export_hf_checkpoint(state_dict, Config.from_checkpoint(smollm2_dir), smollm2_dir,
                                tmp_path_factory.mktemp("smollm2") / "hf")


def hf_model(hf_dir, nf4: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if nf4 else None
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16, device_map={"": 0},
                                                quantization_config=quantization).eval()


@torch.no_grad()
def test_nf4_logits_match_transformers_bitsandbytes(smollm2_dir, hf_dir):
    idx = Tokenizer(smollm2_dir).encode(TEXT)[None].cuda()
    vocab = Config.from_checkpoint(smollm2_dir).vocab_size

    mine = load_model(smollm2_dir, precision="bf16-true", quantize="bnb.nf4", device="cuda")
    reference = hf_model(hf_dir, nf4=True)
    ours_nf4, theirs_nf4 = mine(idx)[..., :vocab].float(), reference(idx).logits.float()
    # the same 4-bit weights (an MLP's down projection: the same matrix on both sides, no fused qkv)
    for layer in (0, 15, 29):
        a, b = mine.transformer.h[layer].mlp.proj.weight, reference.model.layers[layer].mlp.down_proj.weight
        assert torch.equal(a.data, b.data) and torch.equal(a.quant_state.absmax, b.quant_state.absmax)
        assert (a.quant_state.quant_type, a.quant_state.blocksize) == (b.quant_state.quant_type, 64)
    del mine, reference

    def ours(precision: str) -> torch.Tensor:
        return load_model(smollm2_dir, precision=precision, device="cuda")(idx)[..., :vocab].float()

    baseline = (ours("bf16-true") - hf_model(hf_dir, nf4=False)(idx).logits.float()).abs().max().item()
    quantization_effect = (ours_nf4 - ours("32-true")).abs().max().item()
    diff = (ours_nf4 - theirs_nf4).abs()
    limit = 2 * baseline + 0.05
    print(f"nf4 vs transformers + bitsandbytes: max |diff| {diff.max().item():.4f} (mean {diff.mean().item():.5f}), "
          f"limit {limit:.4f}; bf16 baseline {baseline:.4f}; nf4 vs float32 {quantization_effect:.4f}")
    assert limit < quantization_effect / 2  # the tolerance can tell nf4 from not quantizing the same way
    assert diff.max().item() <= limit
    agree = (ours_nf4.argmax(-1) == theirs_nf4.argmax(-1)).float().mean().item()
    assert agree >= 0.95, agree
