"""Our LoRA adapters as Hugging Face PEFT adapter dirs, in both directions (our finetune out dirs: lit_gpt/load.py).

A PEFT adapter dir holds `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
`base_model.model.<transformers module>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r) and scaled by
lora_alpha / r (per module: `rank_pattern` / `alpha_pattern`): the math of our `LoRALinear`. Module by module:

- Llama, Mistral, Qwen2, Qwen3, Gemma 3 (`separate_qkv`): our qkv parts are q_proj/k_proj/v_proj, attn.proj is
  o_proj, the MLP's fc_1/fc_2/proj are gate_proj/up_proj/down_proj, lm_head is lm_head: the tensors are the same.
  (Qwen's qkv bias, the q/k norms and Gemma's extra norms are base weights: no adapter touches them.)
- Phi-3: attn.qkv is qkv_proj (rows [q | k | v], our layout), attn.proj is o_proj, fc_1 and fc_2 are the halves
  [gate | up] of gate_up_proj, proj is down_proj. Both fused modules take one PEFT adapter: see below.
- GPT-NeoX's output layer is the module `lm_head` in transformers 5 (its checkpoints and transformers 4 say
  `embed_out`); PEFT addresses modules, so exports say `lm_head`, and imports take either.
- GPT-NeoX and Falcon fuse q, k and v into one `query_key_value` linear with one A and one B; so do Phi-3's qkv_proj
  (q, k, v) and gate_up_proj (our fc_1, fc_2). Exporting, the k adapters on such a module become one adapter of rank
  k*r: A stacks their A, B puts each one's B in its own r columns and its own rows (block-diagonal, as
  `LoRALinear.stacked_lora`; rows in HF's layout: per head [q, k, v] for GPT-NeoX and multi-head Falcon, ours for
  multi-query Falcon and Phi-3), and rank_pattern / alpha_pattern give the module k*r and k*alpha, so alpha / r is
  unchanged: the same update, exactly. Importing, PEFT's A becomes every part's A and B's rows are split by part.
- Qwen3-MoE's and gpt-oss's expert tensors are PEFT's `target_parameters` (`mlp.experts.gate_up_proj`,
  `mlp.experts.down_proj`, matched as dotted suffixes of the parameter names), in our `Experts` layout already:
  A (E r, in), B (out, r E) (gpt-oss's (E, in, out) tensors: PEFT reads their `is_transposed`).
  PEFT wraps each targeted tensor of a module in a ParamWrapper, nested in parameter order, so with both targeted
  gate_up_proj's adapter is `...mlp.experts.base_layer.lora_A.weight` and down_proj's `...mlp.experts.lora_A.weight`;
  with one targeted, it is `...mlp.experts.lora_A.weight`. PEFT refuses dropout there, and a config has one
  lora_dropout: exports with expert adapters say 0 (dropout only acts in training). The router is never adapted:
  importing, target_parameters that name it (PEFT adds `gate.weight` for target_modules="all-linear") are refused.
  PEFT on transformers 5 takes target_modules gate_proj/up_proj/down_proj of Qwen3-MoE for the experts'
  transformers 4 names (and adapts the fused tensors instead), so adapters on its dense layers' MLPs are not exported;
  Qwen3.5-MoE's shared expert (`mlp.shared_expert.gate_proj` ...) and Gemma 4's dense MLP beside its experts are
  plain modules PEFT adapts as such.

Importing also takes adapters on a subset of modules or layers (the rest get A = B = 0: no change, and zero
gradients keep them zero if training resumes) and per-module ranks (padded with zeros up to the largest rank; a
module whose alpha / r differs from the adapter's has its B rescaled). Settings with no LoRALinear equivalent
(DoRA, rsLoRA, trained biases, saved full modules, adapted embeddings, ...) fail with a message naming them.
"""

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from lit_gpt.config import Config
from lit_gpt.convert import (
    family,
    hf_to_lit_name,
    lit_to_hf_name,
    qkv_from_interleaved,
    qkv_to_interleaved,
    separate_qkv,
)
from lit_gpt.lora import LoRAConfig, LoRALinear, add_lora, suffix
from lit_gpt.model import GPT
from lit_gpt.moe import Experts
from lit_gpt.utils import atomic_dir, fail

PREFIX = "base_model.model."
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def lora_layers(config: Config, lora: LoRAConfig) -> Dict[str, LoRALinear]:
    """Our LoRA layers for these settings, by module name, on the meta device (for their names and shapes)."""
    return {name: m for name, m in _lora_modules(config, lora).items() if isinstance(m, LoRALinear)}


def _lora_modules(config: Config, lora: LoRAConfig) -> Dict[str, torch.nn.Module]:
    """Our LoRA layers and experts with LoRA for these settings, by module name, on the meta device."""
    with torch.device("meta"):
        model = add_lora(GPT(config), lora)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear) or isinstance(m, Experts) and m.r}


# ---------------------------------------------------------------------------------------------------------------------
# our adapter -> PEFT


def _interleaved(config: Config) -> bool:
    """Whether HF's fused qkv holds per head [q, k, v] (GPT-NeoX, multi-head Falcon); multi-query Falcon's
    [q heads | k | v] and Phi-3's qkv_proj [q | k | v] are our layout."""
    return family(config) == "gpt_neox" or (family(config) == "falcon" and config.n_query_groups == config.n_head)


def _fused_qkv_to_hf(t: torch.Tensor, config: Config) -> torch.Tensor:
    """Rows of our fused qkv ([all q | all k | all v]) in the order of HF's fused qkv."""
    return qkv_to_interleaved(t, config) if _interleaved(config) else t


def _fused_qkv_from_hf(t: torch.Tensor, config: Config) -> torch.Tensor:
    """Rows of HF's fused qkv in our order."""
    return qkv_from_interleaved(t, config) if _interleaved(config) else t


def _block_diagonal(parts: List[Tuple[int, Optional[Tuple[torch.Tensor, torch.Tensor]]]]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One (A, B) for adapters on consecutive row ranges: `parts` is [(rows, (A, B) or None for no adapter)]; A
    stacks the A's, B holds each part's B at its rows and its own columns (zeros elsewhere)."""
    A = torch.cat([ab[0] for _, ab in parts if ab is not None])  # (k*r, in)
    B = A.new_zeros(sum(rows for rows, _ in parts), A.size(0))  # (out, k*r)
    row = col = 0
    for rows, ab in parts:
        if ab is not None:
            B[row: row + rows, col: col + ab[1].size(1)] = ab[1]
            col += ab[1].size(1)
        row += rows
    return A, B


def _hf_module(name: str, config: Config, part: Optional[str] = None) -> str:
    """The transformers module (as PEFT addresses it) of our module `name` (Llama's qkv: of its `part`)."""
    hf = lit_to_hf_name(name, config, part)
    return "lm_head" if hf == "embed_out" else hf  # GPT-NeoX's output layer in transformers 5


def _lit_module(hf: str, config: Config) -> Tuple[Optional[str], Optional[str]]:
    """(our module, part) of a transformers module: the part is "query"/"key"/"value" for separate q/k/v projections,
    "gate_up" for Phi-3's gate_up_proj (our fc_1 named, fc_2 its second half), else None; (None, None) if we have
    no such module."""
    if hf == "lm_head" and family(config) == "gpt_neox":
        hf = "embed_out"
    weight_name, part = hf_to_lit_name(f"{hf}.weight", config)
    return (weight_name[: -len(".weight")] if weight_name else None), part


EXPERT_TENSORS = ("gate_up", "down")  # our Experts' adapted tensors, in the parameter order of transformers' experts


def _adapted_experts(adapter: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """Our experts modules with LoRA in `adapter` -> their adapted tensors ("gate_up", "down"), in parameter order."""
    modules = sorted({key.rsplit(".lora_A_", 1)[0] for key in adapter if ".experts.lora_A_" in key})
    return {m: [name for name in EXPERT_TENSORS if f"{m}.lora_A_{name}" in adapter] for m in modules}


def _hf_experts(module: str, config: Config) -> str:
    """The transformers experts module of ours (`transformer.h.1.mlp.experts` -> `model.layers.1.mlp.experts`)."""
    return lit_to_hf_name(f"{module}.gate_up_proj", config).rsplit(".", 1)[0]


def _expert_keys(hf_module: str, adapted: List[str]) -> Dict[str, str]:
    """Where PEFT keeps the adapter of each adapted tensor of one experts module: a ParamWrapper per targeted tensor,
    nested in parameter order (the first innermost), so the last is the module itself and each one before it is one
    `.base_layer` deeper (gate_up_proj `...experts.base_layer`, down_proj `...experts`)."""
    return {name: hf_module + ".base_layer" * (len(adapted) - 1 - i) for i, name in enumerate(adapted)}


def _check_family(config: Config) -> None:
    if family(config) == "falcon" and config.n_query_groups not in (1, config.n_head):
        fail(f"{config.name!r}: Falcon with {config.n_query_groups} query groups has no transformers counterpart")


def to_peft(adapter: Dict[str, torch.Tensor], lora: LoRAConfig, config: Config, vocab_size: Optional[int] = None
            ) -> Tuple[dict, Dict[str, torch.Tensor], List[str]]:
    """(adapter_config.json dict, adapter_model.safetensors tensors, notes) of our adapter, for the transformers model
    of `config`. `vocab_size`: rows of the transformers model's lm_head when fewer than our padded vocabulary."""
    _check_family(config)
    tensors, targets, ranks = {}, set(), {}
    layers = lora_layers(config, lora)

    def pairs_of(name: str) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        return {part: (adapter[f"{name}.lora_A{suffix(part)}"], adapter[f"{name}.lora_B{suffix(part)}"])
                for part in layers[name].adapted}

    for name, layer in layers.items():
        pairs = pairs_of(name)
        if name.endswith(".attn.qkv") and separate_qkv(config):  # q_proj, k_proj, v_proj: one to one
            per_module = {_hf_module(name, config, part): pairs[part] for part in layer.adapted}
        elif name.endswith(".attn.qkv"):  # query_key_value / qkv_proj: one block-diagonal adapter of rank k*r
            A, B = _block_diagonal([(rows, pairs.get(part)) for part, rows in layer.parts.items()])
            per_module = {_hf_module(name, config): (A, _fused_qkv_to_hf(B, config))}
        elif family(config) == "phi3" and name.endswith(".mlp.fc_1"):  # gate_up_proj [fc_1 | fc_2]: rank 2r
            fc_2 = name[: -len("fc_1")] + "fc_2"
            per_module = {_hf_module(name, config): _block_diagonal(
                [(layer.out_features, pairs[""]), (layers[fc_2].out_features, pairs_of(fc_2)[""])])}
        elif family(config) == "phi3" and name.endswith(".mlp.fc_2"):
            continue  # exported with fc_1
        else:
            A, B = pairs[""]
            if name == "lm_head" and vocab_size is not None and vocab_size < B.size(0):
                B = B[:vocab_size]  # our vocabulary is padded; the padded rows' logits are never used
            per_module = {_hf_module(name, config): (A, B)}
        for module, (A, B) in per_module.items():
            if A.size(0) > lora.r:  # a fused module: k adapters of rank r as one of rank k*r
                ranks[module.rsplit(".", 1)[-1]] = A.size(0) // lora.r
            tensors[f"{PREFIX}{module}.lora_A.weight"] = A.contiguous()
            tensors[f"{PREFIX}{module}.lora_B.weight"] = B.contiguous()
            targets.add(module.rsplit(".", 1)[-1])
    if family(config) == "qwen3_moe" and targets & {"gate_proj", "up_proj", "down_proj"}:
        fail(f"PEFT on transformers 5 takes target_modules gate_proj/up_proj/down_proj of {family(config)} for its "
             f"experts, so the dense layers' MLP adapters ({next(n for n in layers if '.mlp.' in n)}, ...) would not "
             "load: finetune with --lora_mlp false, or merge (scripts/merge_lora.py)")

    parameters, notes = [], []  # the expert tensors: PEFT's target_parameters, e.g. "mlp.experts.gate_up_proj"
    for module, adapted in _adapted_experts(adapter).items():
        hf = _hf_experts(module, config)
        for name, key in _expert_keys(hf, adapted).items():
            tensors[f"{PREFIX}{key}.lora_A.weight"] = adapter[f"{module}.lora_A_{name}"].contiguous()  # (E r, in)
            tensors[f"{PREFIX}{key}.lora_B.weight"] = adapter[f"{module}.lora_B_{name}"].contiguous()  # (out, r E)
            parameter = f"{hf.split('.', 3)[-1]}.{name}_proj"  # matched by PEFT as a dotted suffix of the name
            if parameter not in parameters:
                parameters.append(parameter)
    dropout = lora.dropout
    if parameters and dropout:  # PEFT's ParamWrapper refuses dropout; the config has one value for all modules
        dropout = 0.0
        notes.append(f"lora_dropout is written as 0, not the run's {lora.dropout:g} on the linear layers: PEFT refuses "
                     "dropout on target_parameters (the expert tensors), and the config holds one value for all "
                     "(outputs are the same: dropout acts in training only)")
    peft_config = dict(
        peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=None, r=lora.r, lora_alpha=lora.alpha,
        lora_dropout=dropout, target_modules=sorted(targets), target_parameters=parameters or None, bias="none",
        fan_in_fan_out=False, use_rslora=False, use_dora=False, modules_to_save=None, init_lora_weights=True,
        inference_mode=True, layers_to_transform=None, layers_pattern=None, lora_bias=False, ensure_weight_tying=False,
        rank_pattern={m: k * lora.r for m, k in ranks.items()},
        alpha_pattern={m: k * lora.alpha for m, k in ranks.items()},
    )
    return peft_config, tensors, notes


def write_peft_dir(out_dir: Union[str, Path], peft_config: dict, tensors: Dict[str, torch.Tensor]) -> Path:
    """adapter_config.json + adapter_model.safetensors, written into a temp dir renamed onto `out_dir`."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------------------
# PEFT -> our adapter


def read_peft_dir(peft_dir: Union[str, Path]) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of a PEFT adapter dir (adapter_model.safetensors, or the older .bin)."""
    peft_dir = Path(peft_dir)
    if not (peft_dir / PEFT_CONFIG).is_file():
        fail(f"{str(peft_dir)!r} is not a PEFT adapter dir: it has no {PEFT_CONFIG} (PeftModel.save_pretrained "
             "writes it next to adapter_model.safetensors)")
    try:
        peft_config = json.loads((peft_dir / PEFT_CONFIG).read_text(encoding="utf-8"))
    except ValueError as e:
        fail(f"{str(peft_dir / PEFT_CONFIG)!r} is not valid JSON ({e})")
    if not isinstance(peft_config, dict):
        fail(f"{str(peft_dir / PEFT_CONFIG)!r} is not a PEFT config (a JSON object)")
    weights = next((peft_dir / n for n in (PEFT_WEIGHTS, "adapter_model.bin") if (peft_dir / n).is_file()), None)
    if weights is None:
        fail(f"{str(peft_dir)!r} has no {PEFT_WEIGHTS} (or adapter_model.bin) next to its {PEFT_CONFIG}")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(weights))
        else:
            tensors = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError("not a dict of tensors")
    except Exception as e:
        fail(f"Could not read {str(weights)!r} (corrupt or truncated?): {type(e).__name__}: "
             f"{str(e).splitlines()[0] if str(e) else ''}")
    return peft_config, tensors


_INITS = (True, False, "gaussian", "eva", "orthogonal")  # initializations that leave the base weights as they are


def check_peft_config(peft_config: dict, source: str = "the PEFT adapter") -> None:
    """Fails naming every setting of `peft_config` that our LoRALinear cannot reproduce."""
    if peft_config.get("peft_type") != "LORA":
        fail(f"{source} is a {peft_config.get('peft_type')!r} adapter; only LoRA adapters (peft_type LORA) can be "
             "imported")
    c = {k: v for k, v in peft_config.items() if v not in (None, False, {}, [])}
    why = {"use_dora": "DoRA: a learned magnitude per output row", "use_rslora": "rsLoRA: scaled by alpha / sqrt(r)",
           "lora_bias": "a trained bias on lora_B", "fan_in_fan_out": "transposed (Conv1D) weights",
           "modules_to_save": "fully trained copies of modules", "trainable_token_indices": "trained token embeddings",
           "layer_replication": "replicated layers", "use_qalora": "QA-LoRA pooling",
           "alora_invocation_tokens": "activated LoRA", "megatron_config": "Megatron layers",
           "use_bdlora": "block-diagonal LoRA", "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA",
           "kasa_config": "KaSA", "arrow_config": "Arrow routing"}
    problems = [f"{key}={c[key]!r} ({reason})" for key, reason in why.items() if key in c]
    if c.get("bias", "none") != "none":
        problems.append(f"bias={c['bias']!r} (trained biases)")
    if peft_config.get("init_lora_weights", True) not in _INITS:
        problems.append(f"init_lora_weights={peft_config['init_lora_weights']!r} (the base weights were changed "
                        "when the adapter was created)")
    if problems:
        fail(f"{source} uses settings our LoRA cannot represent: {'; '.join(problems)}")


def _module_alpha(module: str, peft_config: dict) -> float:
    """lora_alpha of one module: its `alpha_pattern` entry (matched like PEFT: a dotted suffix), else lora_alpha."""
    for pattern, alpha in (peft_config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return alpha
    return peft_config.get("lora_alpha", 8)


def _kinds(name: str, part: Optional[str]) -> List[str]:
    """Our LoRAConfig switches that adapt module `name` (part: Llama's q/k/v) or its part."""
    if name.endswith(".attn.qkv"):
        return [part] if part else ["query", "key", "value"]
    if name.endswith((".attn.gate", ".attn.beta", ".attn.decay")):  # a linear-attention layer's, adapted with its qkv
        return ["query", "key", "value"]
    if name.endswith(".attn.proj"):
        return ["projection"]
    return ["head"] if name == "lm_head" else ["mlp"]


def from_peft(peft_config: dict, tensors: Dict[str, torch.Tensor], config: Config,
              base_state_dict: Optional[Dict[str, torch.Tensor]] = None, source: str = "the PEFT adapter"
              ) -> Tuple[LoRAConfig, Dict[str, torch.Tensor], List[str]]:
    """(LoRA settings, our adapter, notes) of a PEFT LoRA adapter for the transformers model of `config`.

    `base_state_dict`: our base weights, to check base weights the adapter saved (PEFT saves lm_head's when it is
    adapted) against. Notes say what was zero-filled or rescaled.
    """
    _check_family(config)
    check_peft_config(peft_config, source)
    modules = _lora_modules(config, LoRAConfig(r=1, alpha=1))  # every module we can adapt
    every = {name: m for name, m in modules.items() if isinstance(m, LoRALinear)}
    experts = {name: m for name, m in modules.items() if isinstance(m, Experts)}
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}  # HF module -> {"A": ..., "B": ...}
    for key, tensor in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else None
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name or "")
        if match:
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif name and name.endswith(".weight") and ".lora_" not in name:  # a base weight PEFT saved along
            _check_saved_base_weight(name.replace(".base_layer.", "."), tensor, config, base_state_dict, source)
        else:
            fail(f"{source} holds {key!r}, which is no LoRA A/B weight we can map (embedding LoRA, DoRA magnitude, "
                 "a bias?)")
    if not pairs:
        fail(f"{source} holds no LoRA weights (no '...lora_A.weight' tensors)")

    found_experts = _read_experts(pairs, peft_config, config, experts, source)  # (takes their pairs out)
    found = {}  # (our module, part or None) -> (A, B, alpha / r of that module)
    for module, ab in sorted(pairs.items()):
        ours, part = _lit_module(module, config)
        if ours not in every:
            fail(f"{source} adapts {module!r}, which has no LoRA counterpart in a {family(config)} model (we adapt "
                 "the attention q/k/v and output projections, the MLP and the LM head)")
        if set(ab) != {"A", "B"} or ab["A"].ndim != 2 or ab["B"].ndim != 2 or ab["B"].size(1) != ab["A"].size(0):
            fail(f"{source}: {module!r} needs a lora_A (r, in) and a lora_B (out, r); it has "
                 f"{ {k: tuple(v.shape) for k, v in ab.items()} }")
        A, B = ab["A"], ab["B"]
        layer = every[ours]
        rows = 2 * layer.out_features if part == "gate_up" else layer.parts[part] if part else layer.out_features
        if ours == "lm_head" and B.size(0) < rows:  # our vocabulary may be padded: zero rows for the padding
            B = torch.cat([B, B.new_zeros(rows - B.size(0), B.size(1))])
        if A.size(1) != layer.in_features or B.size(0) != rows:
            fail(f"{source}: {module!r} has lora_A {tuple(A.shape)} and lora_B {tuple(ab['B'].shape)}, but "
                 f"{config.name!r} needs lora_A (r, {layer.in_features}) and lora_B ({rows}, r) there: was the "
                 "adapter trained on another model?")
        module_scaling = _module_alpha(module, peft_config) / A.size(0)
        if part == "gate_up":  # Phi-3: the rows of B are [fc_1 | fc_2], both take A
            for lit, half in zip((ours, ours[: -len("fc_1")] + "fc_2"), B.chunk(2)):
                found[(lit, None)] = (A, half, module_scaling)
        else:
            found[(ours, part)] = (A, B, module_scaling)

    ranks = [A.size(0) for A, _, _ in found.values()]
    ranks += [A.size(0) // config.n_expert for A, _, _ in found_experts.values()]  # A: (E r, in)
    r = max(ranks)
    scaling = peft_config.get("lora_alpha", 8) / peft_config.get("r", 8)  # PEFT's scaling outside the patterns
    alpha = scaling * r
    kinds = {kind for ours, part in found for kind in _kinds(ours, part)}
    lora = LoRAConfig(r=r, alpha=int(alpha) if float(alpha).is_integer() else alpha,
                      dropout=peft_config.get("lora_dropout", 0.0), experts=bool(found_experts),
                      **{k: k in kinds for k in ("query", "key", "value", "projection", "mlp", "head")})
    dtype = next(iter({**found, **found_experts}.values()))[0].dtype
    adapter, zero, rescaled = {}, [], 0
    for name, layer in lora_layers(config, lora).items():
        for part in layer.adapted:
            a_name, b_name = f"{name}.lora_A{suffix(part)}", f"{name}.lora_B{suffix(part)}"
            hit = found.get((name, part or None)) or found.get((name, None))
            if hit is None:  # not adapted in PEFT: zero (no change, and zero gradients keep it so)
                adapter[a_name] = torch.zeros(r, layer.in_features, dtype=dtype)
                adapter[b_name] = torch.zeros(layer.parts[part], r, dtype=dtype)
                zero.append(name)
                continue
            A, B, module_scaling = hit
            if part and (name, part) not in found:  # the fused query_key_value: this part's rows of B
                B = dict(zip(layer.parts, _fused_qkv_from_hf(B, config).split(list(layer.parts.values()))))[part]
            if module_scaling != scaling:
                B = (B.float() * (module_scaling / scaling)).to(B.dtype)
                rescaled += 1
            pad = r - A.size(0)  # zero rank padding: B @ A is unchanged
            adapter[a_name] = torch.cat([A, A.new_zeros(pad, A.size(1))]).to(dtype).contiguous()
            adapter[b_name] = torch.cat([B, B.new_zeros(B.size(0), pad)], dim=1).to(dtype).contiguous()
    E = config.n_expert
    for name, module in (experts.items() if lora.experts else ()):
        for tensor in EXPERT_TENSORS:
            a_name, b_name = f"{name}.lora_A_{tensor}", f"{name}.lora_B_{tensor}"
            n_in, n_out = getattr(module, f"lora_A_{tensor}").size(1), getattr(module, f"lora_B_{tensor}").size(0)
            hit = found_experts.get((name, tensor))
            if hit is None:  # PEFT left this tensor as it is: zero
                adapter[a_name] = torch.zeros(E * r, n_in, dtype=dtype)
                adapter[b_name] = torch.zeros(n_out, r * E, dtype=dtype)
                zero.append(f"{name}.{tensor}_proj")
                continue
            A, B, module_scaling = hit
            if module_scaling != scaling:
                B = (B.float() * (module_scaling / scaling)).to(B.dtype)
                rescaled += 1
            rank = A.size(0) // E  # A's rows expert by expert, B's columns rank-major: pad each expert's rank
            adapter[a_name] = F.pad(A.view(E, rank, n_in), (0, 0, 0, r - rank)).reshape(E * r, n_in).to(dtype)
            adapter[b_name] = F.pad(B.view(n_out, rank, E), (0, 0, 0, r - rank)).reshape(n_out, r * E).to(dtype)
    notes = []
    if zero:
        unique = sorted(set(zero))
        notes.append(f"{len(unique)} of our LoRA layers have no PEFT counterpart (e.g. {unique[0]!r}): zero adapters")
    if rescaled:
        notes.append(f"{rescaled} adapters with their own alpha / r had lora_B rescaled to alpha / r = {scaling:g}")
    if any(rank != r for rank in ranks):
        notes.append(f"ranks below {r} were padded with zeros to rank {r}")
    return lora, adapter, notes


def _matches(name: str, targets: List[str]) -> bool:
    """Whether PEFT's target_parameters select parameter `name`: an entry is the name or a dotted suffix of it."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _read_experts(pairs: Dict[str, Dict[str, torch.Tensor]], peft_config: dict, config: Config,
                  experts: Dict[str, Experts], source: str) -> Dict[Tuple[str, str], tuple]:
    """The adapters of PEFT's target_parameters, taken out of `pairs` (HF module -> {"A", "B"}): (our experts module,
    "gate_up" or "down") -> (A (E r, in), B (out, r E), alpha / r of that tensor). Fails on target_parameters that
    name no expert tensor (the router) and on adapters where target_parameters put none."""
    targets = list(peft_config.get("target_parameters") or [])
    hf = {_hf_experts(name, config): name for name in experts}  # model.layers.1.mlp.experts -> ours
    for t in targets:
        if not any(_matches(f"{m}.{tensor}_proj", [t]) for m in hf for tensor in EXPERT_TENSORS):
            hint = "; PEFT's target_modules='all-linear' adds gate.weight: list the modules" * (t == "gate.weight")
            fail(f"{source} targets parameter {t!r}, no expert tensor of {config.name!r} (only "
                 f"mlp.experts.gate_up_proj and down_proj have LoRA here, never the router{hint})")
    found, E = {}, config.n_expert
    for module in sorted(pairs):
        root = re.sub(r"(\.base_layer)+$", "", module)
        if root not in hf:
            continue
        ab = pairs.pop(module)
        adapted = [t for t in EXPERT_TENSORS if _matches(f"{root}.{t}_proj", targets)]
        tensor = {key: t for t, key in _expert_keys(root, adapted).items()}.get(module)
        if tensor is None:
            fail(f"{source} holds an adapter at {module!r}, where its target_parameters {targets} put none")
        ours = experts[hf[root]]
        n_in, n_out = getattr(ours, f"lora_A_{tensor}").size(1), getattr(ours, f"lora_B_{tensor}").size(0)
        A, B = ab.get("A"), ab.get("B")
        if A is None or B is None or A.ndim != 2 or B.ndim != 2 or A.size(0) % E or B.size(1) != A.size(0) or \
                A.size(1) != n_in or B.size(0) != n_out:
            fail(f"{source}: {module!r} ({tensor}_proj of {E} experts) needs lora_A ({E} r, {n_in}) and lora_B "
                 f"({n_out}, r {E}); it has {({k: tuple(v.shape) for k, v in ab.items()})}: was the adapter trained "
                 "on another model?")
        found[(hf[root], tensor)] = (A, B, _module_alpha(f"{root}.{tensor}_proj", peft_config) / (A.size(0) // E))
    return found


def _check_saved_base_weight(name: str, tensor: torch.Tensor, config: Config,
                             base_state_dict: Optional[Dict[str, torch.Tensor]], source: str) -> None:
    """PEFT saves lm_head's (or the embedding's) base weight with an adapter on it: it must be our base's."""
    module, _ = _lit_module(name[: -len(".weight")], config)
    ours = f"{module}.weight"
    if module not in ("lm_head", "transformer.wte"):
        fail(f"{source} holds the full weight {name!r}: a trained base weight, which our adapters cannot represent")
    if base_state_dict is None:
        return
    base = base_state_dict.get(ours)
    if base is None and config.tie_embeddings:
        base = base_state_dict.get("transformer.wte.weight")
    if base is None:  # cannot compare, no need either (tensors of the base do not change)
        return
    if tensor.size(1) != base.size(1) or tensor.size(0) > base.size(0):
        fail(f"{source} saved {name!r} with shape {tuple(tensor.shape)}, but the base's {ours!r} has shape "
             f"{tuple(base.shape)}: the adapter belongs to another model (or a resized vocabulary)")
    base = base[: tensor.size(0)].float()
    if (tensor.float() - base).abs().max() > 1e-2 * base.abs().max():
        fail(f"{source} saved {name!r} and it differs from the base's {ours!r}: the adapter was trained with a "
             "changed (resized or trained) vocabulary, which our adapters cannot represent; merge it with PEFT")
