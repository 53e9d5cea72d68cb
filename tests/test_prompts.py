import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lit_gpt.config import Config, name_to_config
from lit_gpt.prompts import (
    PromptStyle,
    default_prompt_style,
    harmony_answer,
    has_prompt_style,
    load_prompt_style,
    prompt_styles,
    resolve_prompt_style,
    save_prompt_style,
)
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
EXAMPLES = [("What is 7 times 8?", ""), ("Summarize the text.", "Cats sleep a lot.\nDogs too."),
            ("  Padded instruction  ", "")]

# Llama-2-7b-chat-hf's tokenizer_config.json "chat_template" (meta-llama/Llama-2-7b-chat-hf on the Hub)
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# TinyLlama-1.1B-Chat-v1.0's tokenizer_config.json "chat_template" (Zephyr's), as published on the Hub
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

# tatsu-lab/stanford_alpaca train.py PROMPT_DICT
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class GenerationBlocks(Extension):
    """The {% generation %} ... {% endgeneration %} blocks transformers' templates may mark the assistant's text with:
    rendered as their content."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        return nodes.Scope(parser.parse_statements(("name:endgeneration",), drop_needle=True), lineno=lineno)


def render(template: str, messages: list, add_generation_prompt: bool = True, **special: Any) -> str:
    """Renders a chat template the way transformers' apply_chat_template does (sandboxed jinja2, trimmed blocks,
    `raise_exception` and `strftime_now` as globals, {% generation %} blocks)."""
    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **special)


def user_content(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


@pytest.fixture(scope="module")
def smollm2_chat_template(smollm2_gguf: Path) -> str:
    from gguf import GGUFReader

    return GGUFReader(smollm2_gguf).fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("instruction, input", EXAMPLES)
def test_chatml_is_smollm2_chat_template(smollm2_chat_template: str, instruction: str, input: str) -> None:
    style = PromptStyle.from_name("chatml")
    messages = [{"role": "user", "content": user_content(instruction, input)}]
    assert style.apply(instruction, input) == render(smollm2_chat_template, messages)
    # the training text (prompt, answer, eos = <|im_end|>) is what the template renders for the whole exchange
    answer = "56"
    full = render(smollm2_chat_template, messages + [{"role": "assistant", "content": answer}], False)
    assert full.startswith(style.apply(instruction, input) + style.response_prefix + answer + "<|im_end|>")


@pytest.mark.parametrize("instruction, input", EXAMPLES)
def test_llama2_chat_is_published_template(instruction: str, input: str) -> None:
    style = PromptStyle.from_name("llama2-chat")
    messages = [{"role": "system", "content": style.system},
                {"role": "user", "content": user_content(instruction, input)}]
    special = dict(bos_token="<s>", eos_token="</s>")
    assert "<s>" + style.apply(instruction, input) == render(LLAMA2_CHAT_TEMPLATE, messages, **special)
    full = render(LLAMA2_CHAT_TEMPLATE, messages + [{"role": "assistant", "content": "It is 56."}], **special)
    assert full == "<s>" + style.apply(instruction, input) + style.response_prefix + "It is 56." + " </s>"


@pytest.mark.parametrize("instruction, input", EXAMPLES)
def test_tinyllama_chat_is_published_template(instruction: str, input: str) -> None:
    style = PromptStyle.from_name("tinyllama-chat")
    messages = [{"role": "system", "content": style.system},
                {"role": "user", "content": user_content(instruction, input)}]
    special = dict(bos_token="<s>", eos_token="</s>")
    assert style.apply(instruction, input) == render(TINYLLAMA_CHAT_TEMPLATE, messages, **special)
    # the model card's example rendering
    card = ("<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate</s>\n<|user|>\n"
            "How many helicopters can a human eat in one sitting?</s>\n<|assistant|>\n")
    card_messages = [{"role": "system", "content": "You are a friendly chatbot who always responds in the style of a "
                                                   "pirate"},
                     {"role": "user", "content": "How many helicopters can a human eat in one sitting?"}]
    assert render(TINYLLAMA_CHAT_TEMPLATE, card_messages, **special) == card


def test_alpaca_is_stanford_template() -> None:
    style = PromptStyle.from_name("alpaca")
    assert style.apply("Sort them.", "3, 1, 2") == ALPACA_PROMPT_INPUT.format(instruction="Sort them.",
                                                                               input="3, 1, 2")
    assert style.apply("Name a color.") == ALPACA_PROMPT_NO_INPUT.format(instruction="Name a color.")
    assert style.apply("Name a color.", "") == style.apply("Name a color.")


def test_qa_and_falcon_formats() -> None:
    assert PromptStyle.from_name("qa").apply("What is 2 + 2?") == "Q: What is 2 + 2?\nA:"
    assert PromptStyle.from_name("qa").apply("Add them.", "2 and 2") == "Q: Add them.\n2 and 2\nA:"
    assert PromptStyle.from_name("falcon-instruct").apply("Hi there", "ctx") == "User: Hi there\n\nctx\nFalcon:"


def test_from_name_unknown_lists_names() -> None:
    with pytest.raises(UserError, match="Unknown prompt style 'vicuna'") as e:
        PromptStyle.from_name("vicuna")
    for name in prompt_styles:
        assert name in str(e.value)
    for name in prompt_styles:
        assert PromptStyle.from_name(name).name == name


# chat presets (named as the Hugging Face repos, without the organization) -> their style; the 2026 ones need not be
# presets yet: a name that is not one is checked by name alone
CHAT_PRESETS = {
    "Llama-2-7b-chat-hf": "llama2-chat", "Llama-2-70b-chat-hf": "llama2-chat",
    "TinyLlama-1.1B-Chat-v1.0": "tinyllama-chat", "SmolLM2-135M-Instruct": "chatml", "SmolLM2-1.7B-Instruct": "chatml",
    "falcon-7b-instruct": "falcon-instruct", "Llama-3.2-1B-Instruct": "llama3.1", "Llama-3.2-3B-Instruct": "llama3.1",
    "Llama-3.1-8B-Instruct": "llama3.1", "Llama-3.3-70B-Instruct": "llama3.1",
    **{f"Qwen2.5-{size}-Instruct": "qwen2.5" for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")},
    # the hybrid thinking models
    **{f"Qwen3-{size}": "qwen3" for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B", "30B-A3B", "235B-A22B")},
    **{f"Qwen3-{size}-Instruct-2507": "qwen3-instruct-2507" for size in ("4B", "30B-A3B", "235B-A22B")},
    "gpt-oss-20b": "gpt-oss", "gpt-oss-120b": "gpt-oss",
    **{f"gemma-3-{size}-it": "gemma3" for size in ("270m", "1b", "4b", "12b", "27b")},
    "Phi-3-mini-4k-instruct": "phi3", "Phi-4-mini-instruct": "phi4-mini", "Mistral-Nemo-Instruct-2407": "mistral-nemo",
    **{f"Qwen3.5-{size}": "qwen3.5-nothink" for size in ("0.8B", "2B")},  # instruct; their template thinks when asked
    **{f"Qwen3.5-{size}": "qwen3.5" for size in ("4B", "9B", "27B", "35B-A3B", "122B-A10B", "397B-A17B")},
    "SmolLM3-3B": "smollm3",
    **{f"OLMo-2-{size}-Instruct": "olmo2" for size in ("0425-1B", "1124-7B", "1124-13B", "0325-32B")},
    "gemma-4-E2B-it": "gemma4", "gemma-4-E4B-it": "gemma4", "gemma-4-31B-it": "gemma4-nothink",
    "gemma-4-26B-A4B-it": "gemma4-nothink",
    "Olmo-3-7B-Instruct": "olmo3", "Olmo-3.1-32B-Instruct": "olmo3.1", "Olmo-3-7B-Think": "olmo3-think",
    "Olmo-3-32B-Think": "olmo3-32b-think",
}
BASE_PRESETS = ("gemma-3-270m", "gemma-3-1b-pt", "Qwen2.5-7B", "Llama-3.2-1B", "Mistral-Nemo-Base-2407",
                *(f"Qwen3.5-{size}-Base" for size in ("0.8B", "2B", "4B", "9B", "35B-A3B")), "SmolLM3-3B-Base",
                *(f"Ministral-3-{size}-Base-2512" for size in ("3B", "8B", "14B")),
                "OLMo-2-1124-7B", "OLMo-2-1124-13B", "OLMo-2-0325-32B", "OLMo-2-0425-1B", "Olmo-3-1025-7B",
                "Olmo-3-1125-32B", "gemma-4-E2B", "gemma-4-E4B", "gemma-4-31B")


def preset_or_name(name: str) -> Any:
    return Config.from_name(name) if name in name_to_config else SimpleNamespace(name=name)


def test_default_prompt_style_for_every_preset() -> None:
    for name, style in CHAT_PRESETS.items():
        assert default_prompt_style(preset_or_name(name)).name == style, name
    for name in BASE_PRESETS:
        assert default_prompt_style(preset_or_name(name)).name == "alpaca", name
    # the other presets: chat models by name get some chat style, base models (gemma-3-270m, Qwen2.5-7B,
    # Mistral-Nemo-Base-2407, ...) get alpaca
    for name in set(name_to_config) - set(CHAT_PRESETS):
        chat = any(word in name for word in ("chat", "Chat", "Instruct", "instruct", "-it"))
        assert (default_prompt_style(Config.from_name(name)).name != "alpaca") == chat, name


def test_save_load_resolve(tmp_path: Path) -> None:
    assert not has_prompt_style(tmp_path)
    with pytest.raises(UserError, match="No prompt_style.json"):
        load_prompt_style(tmp_path)
    save_prompt_style(PromptStyle.from_name("qa"), tmp_path)
    assert json.loads((tmp_path / "prompt_style.json").read_text()) == {"name": "qa"}
    assert has_prompt_style(tmp_path) and load_prompt_style(tmp_path).name == "qa"

    # resolve: explicit name > the dir's prompt_style.json > the model's default
    assert resolve_prompt_style("chatml", tmp_path).name == "chatml"
    assert resolve_prompt_style(None, tmp_path).name == "qa"
    model_dir = tmp_path / "TinyLlama-1.1B-Chat-v1.0"
    model_dir.mkdir()
    Config.from_name("TinyLlama-1.1B-Chat-v1.0").save(model_dir / "lit_config.json")
    assert resolve_prompt_style(None, model_dir).name == "tinyllama-chat"
    with pytest.raises(UserError, match="pass --prompt_style"):
        resolve_prompt_style(None, tmp_path / "empty")

    (tmp_path / "prompt_style.json").write_text('{"style": "qa"}')
    with pytest.raises(UserError, match="not a valid prompt style file"):
        load_prompt_style(tmp_path)
    (tmp_path / "prompt_style.json").write_text('{"name": "nope"}')
    with pytest.raises(UserError, match="Unknown prompt style 'nope'"):
        load_prompt_style(tmp_path)


def test_stop_tokens_with_smollm2_tokenizer(smollm2_dir: Path) -> None:
    tokenizer = Tokenizer(smollm2_dir)
    # SmolLM2-Instruct's eos is <|im_end|>: the chat template's end of turn
    assert PromptStyle.from_name("chatml").stop_tokens(tokenizer) == [[tokenizer.eos_id]]
    assert tokenizer.decode([tokenizer.eos_id]) == "<|im_end|>"
    for name in ("qa", "falcon-instruct"):
        style = PromptStyle.from_name(name)
        stops = style.stop_tokens(tokenizer)
        assert stops[0] == [tokenizer.eos_id] and len(stops) == 2
        # the stop sequence is found in the ids of an answer followed by a new turn
        text = style.apply("What is 2 + 2?") + style.response_prefix + "4" + style.stop_strings[0] + " more"
        ids = tokenizer.encode(text, bos=False).tolist()
        assert any(ids[i:i + len(stops[1])] == stops[1] for i in range(len(ids))), (stops, ids)
        assert tokenizer.decode(stops[1]) == style.stop_strings[0]


def test_stop_tokens_in_context_with_sentencepiece(tmp_path: Path) -> None:
    """A sentencepiece tokenizer marks the start of a text with "▁": stop strings are encoded as they appear after
    other text (here with a small Llama-style model trained on the spot)."""
    import sentencepiece as spm

    lines = [f"Q: What is {a} plus {b}?\nA: {a + b}" for a in range(30) for b in range(30)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2,
                                   unk_id=0, add_dummy_prefix=True, minloglevel=2)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "add_bos_token": True}))
    tokenizer = Tokenizer(tmp_path)
    stops = PromptStyle.from_name("qa").stop_tokens(tokenizer)
    assert stops[0] == [2]
    alone = tokenizer.encode("\nQ:", bos=False).tolist()
    ids = tokenizer.encode("A: 5\nQ: What", bos=False).tolist()
    assert not any(ids[i:i + len(alone)] == alone for i in range(len(ids)))  # why encoding it alone is wrong
    assert any(ids[i:i + len(stops[1])] == stops[1] for i in range(len(ids)))


CONVERSATION = [("What is 7 times 8?", "56."), ("  And 9 times 9? ", " It is 81.")]


def chat_messages(turns: list, message: str) -> list:
    messages = []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": message}]


def conversation_messages(system: str = None) -> list:
    system_turn = [{"role": "system", "content": system}] if system else []
    return system_turn + chat_messages(CONVERSATION, "Thanks! Now add them.")


def test_conversations_are_the_chat_templates(smollm2_chat_template: str) -> None:
    """Multi-turn prompts (generate/chat.py) render as each chat model's published template does."""
    def conversation(name: str) -> str:
        return PromptStyle.from_name(name).apply_conversation(CONVERSATION, "Thanks! Now add them.")

    special = dict(bos_token="<s>", eos_token="</s>")
    assert conversation("chatml") == render(smollm2_chat_template, conversation_messages())
    llama2 = PromptStyle.from_name("llama2-chat")
    assert "<s>" + conversation("llama2-chat") == render(LLAMA2_CHAT_TEMPLATE, conversation_messages(llama2.system),
                                                         **special)
    tinyllama = PromptStyle.from_name("tinyllama-chat")
    assert conversation("tinyllama-chat") == render(TINYLLAMA_CHAT_TEMPLATE, conversation_messages(tinyllama.system),
                                                    **special)
    # the other styles chain their one-turn prompts; no history is the one-turn prompt
    assert conversation("qa") == ("Q: What is 7 times 8?\nA: 56.\nQ:   And 9 times 9? \nA:  It is 81.\n"
                                  "Q: Thanks! Now add them.\nA:")
    for name, style in prompt_styles.items():
        assert style().apply_conversation([], "Hi there") == style().apply("Hi there"), name


# The chat templates of the Llama 3.x, Qwen2.5, Qwen3, Gemma 3, Phi-3/4 mini and Mistral Nemo instruct models, verbatim:
# the "chat_template" of each model's tokenizer_config.json on the Hugging Face Hub. The Hub was out of reach: the copy
# read is named in brackets ("llama.cpp": its models/templates/, fetched from the Hub by scripts/get_chat_template.py).
# Where a family has several sizes, one was read and the others are taken to share it.

# meta-llama/Llama-3.1-8B-Instruct [the ldp package's llama3.1_chat_template_hf.jinja], and the same text for
# meta-llama/Llama-3.3-70B-Instruct [llama.cpp meta-llama-Llama-3.3-70B-Instruct.jinja]
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    '    {%- set date_string = "26 Jul 2024" %}\n'
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message + builtin tools #}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "{%- if builtin_tools is defined or tools is not none %}\n"
    '    {{- "Environment: ipython\\n" }}\n'
    "{%- endif %}\n"
    "{%- if builtin_tools is defined %}\n"
    "    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n"
    "{%- endif %}\n"
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{%- if tools is not none and not tools_in_user_message %}\n"
    '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function '
    'call." }}\n'
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") "
    "}}\n"
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    "            {%- for arg_name, arg_val in tool_call.arguments | items %}\n"
    "                {{- arg_name + '=\"' + arg_val + '\"' }}\n"
    "                {%- if not loop.last %}\n"
    '                    {{- ", " }}\n'
    "                {%- endif %}\n"
    "                {%- endfor %}\n"
    '            {{- ")" }}\n'
    "        {%- else  %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "            {{- '\"parameters\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    '            {{- "}" }}\n'
    "        {%- endif %}\n"
    "        {%- if builtin_tools is defined %}\n"
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n'
    "        {%- else %}\n"
    '            {{- "<|eot_id|>" }}\n'
    "        {%- endif %}\n"
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# meta-llama/Llama-3.2-3B-Instruct [llama.cpp meta-llama-Llama-3.2-3B-Instruct.jinja]: 3.1's without builtin tools,
# dated with today's date (strftime_now) unless date_string is given
LLAMA32_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message #}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "{%- if tools is not none %}\n"
    '    {{- "Environment: ipython\\n" }}\n'
    "{%- endif %}\n"
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{%- if tools is not none and not tools_in_user_message %}\n"
    '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function '
    'call." }}\n'
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") "
    "}}\n"
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    '        {{- "}" }}\n'
    '        {{- "<|eot_id|>" }}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen/Qwen2.5-7B-Instruct [third-party copies, which agree]
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == '
    '"assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen/Qwen3-0.6B [llama.cpp Qwen-Qwen3-0.6B.jinja]
QWEN3_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided '
    'with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and not(message.content.startswith('<tool_response>') "
    "and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {%- set content = message.content %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in message.content %}\n"
    "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n"
    "                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1"
    "].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)

# google/gemma-3-1b-it and google/gemma-3-12b-it [the chat_template of ggml-org's GGUF conversions, from the Hub API]
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# microsoft/Phi-3-mini-4k-instruct [openvino.genai tests/python_tests/tokenizer_configs.py; another copy agrees]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor "
    "%}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# microsoft/Phi-4-mini-instruct [third-party copies, which agree]
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not "
    "none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + "
    "'<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor "
    "%}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# mistralai/Mistral-Nemo-Instruct-2407 [llama.cpp mistralai-Mistral-Nemo-Instruct-2407.jinja]
MISTRAL_NEMO_CHAT_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
    "\n"
    "{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n"
    "{%- set ns = namespace() %}\n"
    "{%- set ns.index = 0 %}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and '
    "message.tool_calls is not none)) %}\n"
    '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
    '            {{- raise_exception("After the optional system message, conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "        {%- endif %}\n"
    "        {%- set ns.index = ns.index + 1 %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if message["role"] == "user" %}\n'
    "        {%- if tools is not none and (message == user_messages[-1]) %}\n"
    '            {{- "[AVAILABLE_TOOLS][" }}\n'
    "            {%- for tool in tools %}\n"
    "                {%- set tool = tool.function %}\n"
    "                {{- '{\"type\": \"function\", \"function\": {' }}\n"
    '                {%- for key, val in tool.items() if key != "return" %}\n'
    "                    {%- if val is string %}\n"
    "                        {{- '\"' + key + '\": \"' + val + '\"' }}\n"
    "                    {%- else %}\n"
    "                        {{- '\"' + key + '\": ' + val|tojson }}\n"
    "                    {%- endif %}\n"
    "                    {%- if not loop.last %}\n"
    '                        {{- ", " }}\n'
    "                    {%- endif %}\n"
    "                {%- endfor %}\n"
    '                {{- "}}" }}\n'
    "                {%- if not loop.last %}\n"
    '                    {{- ", " }}\n'
    "                {%- else %}\n"
    '                    {{- "]" }}\n'
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    '            {{- "[/AVAILABLE_TOOLS]" }}\n'
    "            {%- endif %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    '            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    "        {%- else %}\n"
    '            {{- "[INST]" + message["content"] + "[/INST]" }}\n'
    "        {%- endif %}\n"
    "    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}\n"
    '        {{- "[TOOL_CALLS][" }}\n'
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- set out = tool_call.function|tojson %}\n"
    "            {{- out[:-1] }}\n"
    "            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n"
    '                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    "            {%- endif %}\n"
    "            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n"
    "            {%- if not loop.last %}\n"
    '                {{- ", " }}\n'
    "            {%- else %}\n"
    '                {{- "]" + eos_token }}\n'
    "            {%- endif %}\n"
    "        {%- endfor %}\n"
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- message["content"] + eos_token}}\n'
    '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
    "        {%- if message.content is defined and message.content.content is defined %}\n"
    "            {%- set content = message.content.content %}\n"
    "        {%- else %}\n"
    "            {%- set content = message.content %}\n"
    "        {%- endif %}\n"
    "        {{- '[TOOL_RESULTS]{\"content\": ' + content|string + \", \" }}\n"
    "        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n"
    '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    "        {%- endif %}\n"
    "        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n"
    "    {%- else %}\n"
    '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial '
    'optional system message!") }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# The chat templates of the 2026 instruct models, verbatim, where a copy could be found (Ministral 3's was not: its
# Instruct and Reasoning repos publish none).

# Qwen/Qwen3.5-27B [a module that holds the template "extracted from Qwen/Qwen3.5-27B tokenizer_config.json";
# mlx-community/Qwen3.5-35B-A3B-4bit's chat_template.jinja, in a Swift test fixture, agrees]: thinking unless
# enable_thinking is false. Qwen3.5-4B, -9B and the MoE sizes are taken to share it.
QWEN35_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- macro render_content(content, do_vision_count, is_system_content=false) %}\n"
    "    {%- if content is string %}\n"
    "        {{- content }}\n"
    "    {%- elif content is iterable and content is not mapping %}\n"
    "        {%- for item in content %}\n"
    "            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}\n"
    "                {%- if is_system_content %}\n"
    "                    {{- raise_exception('System message cannot contain images.') }}\n"
    "                {%- endif %}\n"
    "                {%- if do_vision_count %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                {%- endif %}\n"
    "                {%- if add_vision_id %}\n"
    "                    {{- 'Picture ' ~ image_count.value ~ ': ' }}\n"
    "                {%- endif %}\n"
    "                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}\n"
    "            {%- elif 'video' in item or item.type == 'video' %}\n"
    "                {%- if is_system_content %}\n"
    "                    {{- raise_exception('System message cannot contain videos.') }}\n"
    "                {%- endif %}\n"
    "                {%- if do_vision_count %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                {%- endif %}\n"
    "                {%- if add_vision_id %}\n"
    "                    {{- 'Video ' ~ video_count.value ~ ': ' }}\n"
    "                {%- endif %}\n"
    "                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}\n"
    "            {%- elif 'text' in item %}\n"
    "                {{- item.text }}\n"
    "            {%- else %}\n"
    "                {{- raise_exception('Unexpected item type in content.') }}\n"
    "            {%- endif %}\n"
    "        {%- endfor %}\n"
    "    {%- elif content is none or content is undefined %}\n"
    "        {{- '' }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Unexpected content type.') }}\n"
    "    {%- endif %}\n"
    "{%- endmacro %}\n"
    "{%- if not messages %}\n"
    "    {{- raise_exception('No messages provided.') }}\n"
    "{%- endif %}\n"
    "{%- if tools and tools is iterable and tools is not mapping %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    '    {{- "# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>" }}\n'
    "    {{- '\\n\\nIf you choose to call a function ONLY reply in the following format with NO "
    "suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parame"
    "ter>\\n<parameter=example_parameter_2>\\nThis is the value for the second parameter\\nthat can span\\nmultiple "
    "lines\\n</parameter>\\n</function>\\n</tool_call>\\n\\n<IMPORTANT>\\nReminder:\\n- Function calls MUST follow the "
    "specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML "
    "tags\\n- Required parameters MUST be specified\\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\\n- If there is no function call available, answer the "
    "question like normal with your current knowledge and do not tell the user about function calls\\n</IMPORTANT>' "
    "}}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- set content = render_content(messages[0].content, false, true)|trim %}\n"
    "        {%- if content %}\n"
    "            {{- '\\n\\n' + content }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "    {{- '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- set content = render_content(messages[0].content, false, true)|trim %}\n"
    "        {{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    '    {%- if ns.multi_step_tool and message.role == "user" %}\n'
    "        {%- set content = render_content(message.content, false)|trim %}\n"
    "        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}\n"
    "            {%- set ns.multi_step_tool = false %}\n"
    "            {%- set ns.last_query_index = index %}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if ns.multi_step_tool %}\n"
    "    {{- raise_exception('No user query found in messages.') }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- set content = render_content(message.content, true)|trim %}\n"
    '    {%- if message.role == "system" %}\n'
    "        {%- if not loop.first %}\n"
    "            {{- raise_exception('System message must be at the beginning.') }}\n"
    "        {%- endif %}\n"
    '    {%- elif message.role == "user" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip"
    "('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- set reasoning_content = reasoning_content|trim %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' + "
    "content }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if tool_call.function is defined %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {%- if loop.first %}\n"
    "                    {%- if content|trim %}\n"
    "                        {{- '\\n\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                    {%- else %}\n"
    "                        {{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                    {%- endif %}\n"
    "                {%- else %}\n"
    "                    {{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.arguments is defined %}\n"
    "                    {%- for args_name, args_value in tool_call.arguments|items %}\n"
    "                        {{- '<parameter=' + args_name + '>\\n' }}\n"
    "                        {%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value "
    "is sequence and args_value is not string) else args_value | string %}\n"
    "                        {{- args_value }}\n"
    "                        {{- '\\n</parameter>\\n' }}\n"
    "                    {%- endfor %}\n"
    "                {%- endif %}\n"
    "                {{- '</function>\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.previtem and loop.previtem.role != "tool" %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if not loop.last and loop.nextitem.role != "tool" %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- elif loop.last %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Unexpected message role.') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<think>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)

# Qwen/Qwen3.5-0.8B [unsloth/Qwen3.5-0.8B-GGUF's tokenizer.chat_template, quoted in full in an API document; 7,816
# characters, as another report of that GGUF counts]: the 27B's with thinking only when enable_thinking is true, and
# tool-call arguments iterated by key, unsloth's edit (a report comparing it with the Hub's chat_template.jinja names
# that one difference; another, diffing the Hub's 0.8B and 9B files, finds only the enable_thinking condition).
# Qwen3.5-2B is taken to share it.
QWEN35_SMALL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- macro render_content(content, do_vision_count, is_system_content=false) %}\n"
    "    {%- if content is string %}\n"
    "        {{- content }}\n"
    "    {%- elif content is iterable and content is not mapping %}\n"
    "        {%- for item in content %}\n"
    "            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}\n"
    "                {%- if is_system_content %}\n"
    "                    {{- raise_exception('System message cannot contain images.') }}\n"
    "                {%- endif %}\n"
    "                {%- if do_vision_count %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                {%- endif %}\n"
    "                {%- if add_vision_id %}\n"
    "                    {{- 'Picture ' ~ image_count.value ~ ': ' }}\n"
    "                {%- endif %}\n"
    "                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}\n"
    "            {%- elif 'video' in item or item.type == 'video' %}\n"
    "                {%- if is_system_content %}\n"
    "                    {{- raise_exception('System message cannot contain videos.') }}\n"
    "                {%- endif %}\n"
    "                {%- if do_vision_count %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                {%- endif %}\n"
    "                {%- if add_vision_id %}\n"
    "                    {{- 'Video ' ~ video_count.value ~ ': ' }}\n"
    "                {%- endif %}\n"
    "                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}\n"
    "            {%- elif 'text' in item %}\n"
    "                {{- item.text }}\n"
    "            {%- else %}\n"
    "                {{- raise_exception('Unexpected item type in content.') }}\n"
    "            {%- endif %}\n"
    "        {%- endfor %}\n"
    "    {%- elif content is none or content is undefined %}\n"
    "        {{- '' }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Unexpected content type.') }}\n"
    "    {%- endif %}\n"
    "{%- endmacro %}\n"
    "{%- if not messages %}\n"
    "    {{- raise_exception('No messages provided.') }}\n"
    "{%- endif %}\n"
    "{%- if tools and tools is iterable and tools is not mapping %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    '    {{- "# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>" }}\n'
    "    {{- '\\n\\nIf you choose to call a function ONLY reply in the following format with NO "
    "suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parame"
    "ter>\\n<parameter=example_parameter_2>\\nThis is the value for the second parameter\\nthat can span\\nmultiple "
    "lines\\n</parameter>\\n</function>\\n</tool_call>\\n\\n<IMPORTANT>\\nReminder:\\n- Function calls MUST follow the "
    "specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML "
    "tags\\n- Required parameters MUST be specified\\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\\n- If there is no function call available, answer the "
    "question like normal with your current knowledge and do not tell the user about function calls\\n</IMPORTANT>' "
    "}}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- set content = render_content(messages[0].content, false, true)|trim %}\n"
    "        {%- if content %}\n"
    "            {{- '\\n\\n' + content }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "    {{- '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- set content = render_content(messages[0].content, false, true)|trim %}\n"
    "        {{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    '    {%- if ns.multi_step_tool and message.role == "user" %}\n'
    "        {%- set content = render_content(message.content, false)|trim %}\n"
    "        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}\n"
    "            {%- set ns.multi_step_tool = false %}\n"
    "            {%- set ns.last_query_index = index %}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if ns.multi_step_tool %}\n"
    "    {{- raise_exception('No user query found in messages.') }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- set content = render_content(message.content, true)|trim %}\n"
    '    {%- if message.role == "system" %}\n'
    "        {%- if not loop.first %}\n"
    "            {{- raise_exception('System message must be at the beginning.') }}\n"
    "        {%- endif %}\n"
    '    {%- elif message.role == "user" %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip"
    "('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- set reasoning_content = reasoning_content|trim %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' + "
    "content }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if tool_call.function is defined %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {%- if loop.first %}\n"
    "                    {%- if content|trim %}\n"
    "                        {{- '\\n\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                    {%- else %}\n"
    "                        {{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                    {%- endif %}\n"
    "                {%- else %}\n"
    "                    {{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.arguments is mapping %}\n"
    "                    {%- for args_name in tool_call.arguments %}\n"
    "                        {%- set args_value = tool_call.arguments[args_name] %}\n"
    "                        {{- '<parameter=' + args_name + '>\\n' }}\n"
    "                        {%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value "
    "is sequence and args_value is not string) else args_value | string %}\n"
    "                        {{- args_value }}\n"
    "                        {{- '\\n</parameter>\\n' }}\n"
    "                    {%- endfor %}\n"
    "                {%- endif %}\n"
    "                {{- '</function>\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.previtem and loop.previtem.role != "tool" %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if not loop.last and loop.nextitem.role != "tool" %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- elif loop.last %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Unexpected message role.') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is true %}\n"
    "        {{- '<think>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)

# google/gemma-4-E2B-it's chat_template.jinja, the Hub's since 2026-07-09 ("Google Gemma 4 Canonical Chat Template")
# [ollama/ollama's model/renderers/testdata/gemma4_e2b_chat_template.jinja2: its SHA-256 is the one a template
# provenance table gives for the Hub's E2B-it and E4B-it files, fetched 2026-07-20, and its 18,569 bytes those a
# description of the Hub's E2B-it file counts]: thinking only when enable_thinking is true. Earlier versions differed
# in the generation prompt (an empty thought channel, or an opened one with thinking), hence the hash.
GEMMA4_CHAT_TEMPLATE = (
    "{#\n"
    "  Template: Google Gemma 4 Canonical Chat Template\n"
    "  Author: Google Gemma Engineering Team\n"
    "  Published: 2026-07-09\n"
    "  Context: Fixed tool-calling loops, turn closures, and thinking content-ordering.\n"
    "#}\n"
    "{%- macro format_parameters(properties, required, filter_keys=false) -%}\n"
    "    {%- set standard_keys = ['description', 'type', 'properties', 'required', 'nullable'] -%}\n"
    "    {%- set ns = namespace(found_first=false) -%}\n"
    "    {%- for key, value in properties | dictsort -%}\n"
    "        {%- set add_comma = false -%}\n"
    "        {%- if not filter_keys or key not in standard_keys -%}\n"
    "            {%- if ns.found_first %},{% endif -%}\n"
    "            {%- set ns.found_first = true -%}\n"
    "            {{ key }}:{\n"
    "            {%- if value['description'] -%}\n"
    "                description:<|\"|>{{ value['description'] }}<|\"|>\n"
    "                {%- set add_comma = true -%}\n"
    "            {%- endif -%}\n"
    "            {%- if value['type'] | upper == 'STRING' -%}\n"
    "                {%- if value['enum'] -%}\n"
    "                    {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                    enum:{{ format_argument(value['enum']) }}\n"
    "                {%- endif -%}\n"
    "            {%- elif value['type'] | upper == 'ARRAY' -%}\n"
    "                {%- if value['items'] is mapping and value['items'] -%}\n"
    "                    {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                    items:{\n"
    "                    {%- set ns_items = namespace(found_first=false) -%}\n"
    "                    {%- for item_key, item_value in value['items'] | dictsort -%}\n"
    "                        {%- if item_value is not none -%}\n"
    "                            {%- if ns_items.found_first %},{% endif -%}\n"
    "                            {%- set ns_items.found_first = true -%}\n"
    "                            {%- if item_key == 'properties' -%}\n"
    "                                properties:{\n"
    "                                {%- if item_value is mapping -%}\n"
    "                                    {{- format_parameters(item_value, value['items']['required'] | default([])) -}"
    "}\n"
    "                                {%- endif -%}\n"
    "                                }\n"
    "                            {%- elif item_key == 'required' -%}\n"
    "                                required:[\n"
    "                                {%- for req_item in item_value -%}\n"
    '                                    <|"|>{{- req_item -}}<|"|>\n'
    "                                    {%- if not loop.last %},{% endif -%}\n"
    "                                {%- endfor -%}\n"
    "                                ]\n"
    "                            {%- elif item_key == 'type' -%}\n"
    "                                {%- if item_value is string -%}\n"
    "                                    type:{{ format_argument(item_value | upper) }}\n"
    "                                {%- else -%}\n"
    "                                    type:{{ format_argument(item_value | map('upper') | list) }}\n"
    "                                {%- endif -%}\n"
    "                            {%- else -%}\n"
    "                                {{ item_key }}:{{ format_argument(item_value) }}\n"
    "                            {%- endif -%}\n"
    "                        {%- endif -%}\n"
    "                    {%- endfor -%}\n"
    "                    }\n"
    "                {%- endif -%}\n"
    "            {%- endif -%}\n"
    "            {%- if value['nullable'] %}\n"
    "                {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                nullable:true\n"
    "            {%- endif -%}\n"
    "            {%- if value['type'] | upper == 'OBJECT' -%}\n"
    "                {%- if value['properties'] is defined and value['properties'] is mapping -%}\n"
    "                    {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                    properties:{\n"
    "                    {{- format_parameters(value['properties'], value['required'] | default([])) -}}\n"
    "                    }\n"
    "                {%- elif value is mapping -%}\n"
    "                    {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                    properties:{\n"
    "                    {{- format_parameters(value, value['required'] | default([]), filter_keys=true) -}}\n"
    "                    }\n"
    "                {%- endif -%}\n"
    "                {%- if value['required'] -%}\n"
    "                    {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "                    required:[\n"
    "                    {%- for item in value['required'] | default([]) -%}\n"
    '                        <|"|>{{- item -}}<|"|>\n'
    "                        {%- if not loop.last %},{% endif -%}\n"
    "                    {%- endfor -%}\n"
    "                    ]\n"
    "                {%- endif -%}\n"
    "            {%- endif -%}\n"
    "            {%- if add_comma %},{%- else -%} {%- set add_comma = true -%} {% endif -%}\n"
    "            type:<|\"|>{{ value['type'] | upper }}<|\"|>}\n"
    "        {%- endif -%}\n"
    "    {%- endfor -%}\n"
    "{%- endmacro -%}\n"
    "{%- macro format_function_declaration(tool_data) -%}\n"
    "    declaration:{{- tool_data['function']['name'] -}}{description:<|\"|>{{- tool_data['function']['description'] -"
    "}}<|\"|>\n"
    "    {%- set params = tool_data['function']['parameters'] -%}\n"
    "    {%- if params -%}\n"
    "        ,parameters:{\n"
    "        {%- if params['properties'] -%}\n"
    "            properties:{ {{- format_parameters(params['properties'], params['required']) -}} },\n"
    "        {%- endif -%}\n"
    "        {%- if params['required'] -%}\n"
    "            required:[\n"
    "            {%- for item in params['required'] -%}\n"
    '                <|"|>{{- item -}}<|"|>\n'
    "                {{- ',' if not loop.last -}}\n"
    "            {%- endfor -%}\n"
    "            ],\n"
    "        {%- endif -%}\n"
    "        {%- if params['type'] -%}\n"
    "            type:<|\"|>{{- params['type'] | upper -}}<|\"|>}\n"
    "        {%- endif -%}\n"
    "    {%- endif -%}\n"
    "    {%- if 'response' in tool_data['function'] -%}\n"
    "        {%- set response_declaration = tool_data['function']['response'] -%}\n"
    "        ,response:{\n"
    "        {%- if response_declaration['description'] -%}\n"
    "            description:<|\"|>{{- response_declaration['description'] -}}<|\"|>,\n"
    "        {%- endif -%}\n"
    "        {%- if response_declaration['type'] | upper == 'OBJECT' -%}\n"
    "            type:<|\"|>{{- response_declaration['type'] | upper -}}<|\"|>}\n"
    "        {%- endif -%}\n"
    "    {%- endif -%}\n"
    "    }\n"
    "{%- endmacro -%}\n"
    "{%- macro format_argument(argument, escape_keys=True) -%}\n"
    "    {%- if argument is none -%}\n"
    "        {{- 'null' -}}\n"
    "    {%- elif argument is string -%}\n"
    "        {{- '<|\"|>' + argument + '<|\"|>' -}}\n"
    "    {%- elif argument is boolean -%}\n"
    "        {{- 'true' if argument else 'false' -}}\n"
    "    {%- elif argument is mapping -%}\n"
    "        {{- '{' -}}\n"
    "        {%- set ns = namespace(found_first=false) -%}\n"
    "        {%- for key, value in argument | dictsort -%}\n"
    "            {%- if ns.found_first %},{% endif -%}\n"
    "            {%- set ns.found_first = true -%}\n"
    "            {%- if escape_keys -%}\n"
    "                {{- '<|\"|>' + key + '<|\"|>' -}}\n"
    "            {%- else -%}\n"
    "                {{- key -}}\n"
    "            {%- endif -%}\n"
    "            :{{- format_argument(value, escape_keys=escape_keys) -}}\n"
    "        {%- endfor -%}\n"
    "        {{- '}' -}}\n"
    "    {%- elif argument is sequence -%}\n"
    "        {{- '[' -}}\n"
    "        {%- for item in argument -%}\n"
    "            {{- format_argument(item, escape_keys=escape_keys) -}}\n"
    "            {%- if not loop.last %},{% endif -%}\n"
    "        {%- endfor -%}\n"
    "        {{- ']' -}}\n"
    "    {%- else -%}\n"
    "        {{- argument -}}\n"
    "    {%- endif -%}\n"
    "{%- endmacro -%}\n"
    "{%- macro strip_thinking(text) -%}\n"
    "    {%- set ns = namespace(result='') -%}\n"
    "    {%- for part in text.split('<channel|>') -%}\n"
    "        {%- if '<|channel>' in part -%}\n"
    "            {%- set ns.result = ns.result + part.split('<|channel>')[0] -%}\n"
    "        {%- else -%}\n"
    "            {%- set ns.result = ns.result + part -%}\n"
    "        {%- endif -%}\n"
    "    {%- endfor -%}\n"
    "    {{- ns.result | trim -}}\n"
    "{%- endmacro -%}\n"
    "\n"
    "{%- macro format_tool_response_block(tool_name, response) -%}\n"
    "    {{- '<|tool_response>' -}}\n"
    "    {%- if response is mapping -%}\n"
    "        {{- 'response:' + tool_name + '{' -}}\n"
    "        {%- for key, value in response | dictsort -%}\n"
    "            {{- key -}}:{{- format_argument(value, escape_keys=False) -}}\n"
    "            {%- if not loop.last %},{% endif -%}\n"
    "        {%- endfor -%}\n"
    "        {{- '}' -}}\n"
    "    {%- else -%}\n"
    "        {{- 'response:' + tool_name + '{value:' + format_argument(response, escape_keys=False) + '}' -}}\n"
    "    {%- endif -%}\n"
    "    {{- '<tool_response|>' -}}\n"
    "{%- endmacro -%}\n"
    "\n"
    "{#- ===== SETUP ===== -#}\n"
    "{%- set ns = namespace(prev_message_type=None, prev_non_tool_role=None) -%}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- set enable_thinking = enable_thinking | default(false) -%}\n"
    "{%- set preserve_thinking = preserve_thinking | default(false) -%}\n"
    "{{- bos_token -}}\n"
    "{#- Handle System/Tool Definitions Block -#}\n"
    "{%- if enable_thinking or tools or (messages and messages[0]['role'] in ['system', 'developer']) -%}\n"
    "    {{- '<|turn>system\\n' -}}\n"
    "    {#- Inject Thinking token at the very top of the FIRST system turn -#}\n"
    "    {%- if enable_thinking -%}\n"
    "        {{- '<|think|>\\n' -}}\n"
    "        {%- set ns.prev_message_type = 'think' -%}\n"
    "    {%- endif -%}\n"
    "    {%- if messages and messages[0]['role'] in ['system', 'developer'] -%}\n"
    "        {%- if messages[0]['content'] is string -%}\n"
    "            {{- messages[0]['content'] | trim -}}\n"
    "        {%- elif messages[0]['content'] is sequence -%}\n"
    "            {%- for item in messages[0]['content'] -%}\n"
    "                {{- item['text'] | trim + ' '-}}\n"
    "            {%- endfor -%}\n"
    "        {%- endif -%}\n"
    "        {%- set loop_messages = messages[1:] -%}\n"
    "    {%- endif -%}\n"
    "    {%- if tools -%}\n"
    "        {%- for tool in tools %}\n"
    "            {{- '<|tool>' -}}\n"
    "            {{- format_function_declaration(tool) | trim -}}\n"
    "            {{- '<tool|>' -}}\n"
    "        {%- endfor %}\n"
    "        {%- set ns.prev_message_type = 'tool' -%}\n"
    "    {%- endif -%}\n"
    "    {{- '<turn|>\\n' -}}\n"
    "{%- endif %}\n"
    "\n"
    "{#- Pre-scan: find last user message index for reasoning guard -#}\n"
    "{%- set ns_turn = namespace(last_user_idx=-1) -%}\n"
    "{%- for i in range(loop_messages | length) -%}\n"
    "    {%- if loop_messages[i]['role'] == 'user' -%}\n"
    "        {%- set ns_turn.last_user_idx = i -%}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "\n"
    "{#- Loop through messages -#}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if message['role'] != 'tool' -%}\n"
    "    {%- set ns.prev_message_type = None -%}\n"
    "    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "    {#- Detect continuation using tracked state — O(1) instead of O(n) backward scan -#}\n"
    "    {%- set continue_same_model_turn = (role == 'model' and ns.prev_non_tool_role == 'assistant') -%}\n"
    "    {%- if not continue_same_model_turn -%}\n"
    "        {{- '<|turn>' + role + '\\n' }}\n"
    "    {%- endif -%}\n"
    "\n"
    "    {#- Render reasoning/reasoning_content as thinking channel -#}\n"
    "    {%- set thinking_text = message.get('reasoning') or message.get('reasoning_content') -%}\n"
    "    {%- set thinking_gate = (loop.index0 > ns_turn.last_user_idx) or (preserve_thinking and message.get('tool_call"
    "s')) -%}\n"
    "    {%- if thinking_text and thinking_gate -%}\n"
    "        {{- '<|channel>thought\\n' + thinking_text + '\\n<channel|>' -}}\n"
    "    {%- endif -%}\n"
    "\n"
    "            {%- if message.get('tool_calls') -%}\n"
    "                {%- for tool_call in message.get('tool_calls') -%}\n"
    "                    {%- set function = tool_call['function'] -%}\n"
    "                    {{- '<|tool_call>call:' + function['name'] + '{' -}}\n"
    "                    {%- if function['arguments'] is mapping -%}\n"
    "                        {%- set ns_args = namespace(found_first=false) -%}\n"
    "                        {%- for key, value in function['arguments'] | dictsort -%}\n"
    "                            {%- if ns_args.found_first %},{% endif -%}\n"
    "                            {%- set ns_args.found_first = true -%}\n"
    "                            {{- key -}}:{{- format_argument(value, escape_keys=False) -}}\n"
    "                        {%- endfor -%}\n"
    "                    {%- elif function['arguments'] is none -%}\n"
    "                    {%- else -%}\n"
    "                        {{- raise_exception(\n"
    '                            "chat_template: tool_calls[].function.arguments must be a "\n'
    '                            "JSON object (mapping), not a string. Deserialize arguments "\n'
    '                            "before passing to the template."\n'
    "                        ) -}}\n"
    "                    {%- endif -%}\n"
    "                    {{- '}<tool_call|>' -}}\n"
    "                {%- endfor -%}\n"
    "                {%- set ns.prev_message_type = 'tool_call' -%}\n"
    "            {%- endif -%}\n"
    "\n"
    "            {%- set ns_tr_out = namespace(flag=false) -%}\n"
    "            {%- if message.get('tool_responses') -%}\n"
    "                {#- Legacy: tool_responses embedded on the assistant message (Google/Gemma native) -#}\n"
    "                {%- for tool_response in message.get('tool_responses') -%}\n"
    "                    {{- format_tool_response_block(tool_response['name'] | default('unknown', true), tool_response"
    "['response']) -}}\n"
    "                    {%- set ns_tr_out.flag = true -%}\n"
    "                    {%- set ns.prev_message_type = 'tool_response' -%}\n"
    "                {%- endfor -%}\n"
    "            {%- elif message.get('tool_calls') -%}\n"
    "                {#- OpenAI Chat Completions: forward-scan consecutive role:tool messages -#}\n"
    "                {%- set ns_tool_scan = namespace(stopped=false) -%}\n"
    "                {%- for k in range(loop.index0 + 1, loop_messages | length) -%}\n"
    "                    {%- if ns_tool_scan.stopped -%}\n"
    "                    {%- elif loop_messages[k]['role'] != 'tool' -%}\n"
    "                        {%- set ns_tool_scan.stopped = true -%}\n"
    "                    {%- else -%}\n"
    "                        {%- set follow = loop_messages[k] -%}\n"
    "                        {#- Resolve tool_call_id to function name -#}\n"
    "                        {%- set ns_tname = namespace(name=follow.get('name') or 'unknown') -%}\n"
    "                        {%- for tc in message.get('tool_calls') -%}\n"
    "                            {%- if tc.get('id') == follow.get('tool_call_id') -%}\n"
    "                                {%- set ns_tname.name = tc['function']['name'] -%}\n"
    "                            {%- endif -%}\n"
    "                        {%- endfor -%}\n"
    "                        {#- Handle content as string or content-parts array -#}\n"
    "                        {%- set tool_body = follow.get('content') -%}\n"
    "                        {%- if tool_body is string -%}\n"
    "                            {{- format_tool_response_block(ns_tname.name, tool_body) -}}\n"
    "                        {%- elif tool_body is sequence and tool_body is not string -%}\n"
    "                            {%- set ns_txt = namespace(s='') -%}\n"
    "                            {%- for part in tool_body -%}\n"
    "                                {%- if part.get('type') == 'text' -%}\n"
    "                                    {%- set ns_txt.s = ns_txt.s + (part.get('text') | default('')) -%}\n"
    "                                {%- endif -%}\n"
    "                            {%- endfor -%}\n"
    "                            {{- format_tool_response_block(ns_tname.name, ns_txt.s) -}}\n"
    "                            {%- for part in tool_body -%}\n"
    "                                {%- if part.get('type') in ['image', 'image_url'] -%}\n"
    "                                    {{- '<|image|>' -}}\n"
    "                                {%- elif part.get('type') in ['audio', 'input_audio'] -%}\n"
    "                                    {{- '<|audio|>' -}}\n"
    "                                {%- elif part.get('type') == 'video' -%}\n"
    "                                    {{- '<|video|>' -}}\n"
    "                                {%- endif -%}\n"
    "                            {%- endfor -%}\n"
    "                        {%- else -%}\n"
    "                            {{- format_tool_response_block(ns_tname.name, tool_body) -}}\n"
    "                        {%- endif -%}\n"
    "                        {%- set ns_tr_out.flag = true -%}\n"
    "                        {%- set ns.prev_message_type = 'tool_response' -%}\n"
    "                    {%- endif -%}\n"
    "                {%- endfor -%}\n"
    "            {%- endif -%}\n"
    "\n"
    "            {%- set captured_content -%}\n"
    "            {%- if message.get('content') is string -%}\n"
    "                {%- if role == 'model' -%}\n"
    "                    {{- strip_thinking(message['content']) -}}\n"
    "                {%- else -%}\n"
    "                    {{- message['content'] | trim -}}\n"
    "                {%- endif -%}\n"
    "            {%- elif message.get('content') is sequence -%}\n"
    "                {%- for item in message['content'] -%}\n"
    "                    {%- if item.get('type') == 'text' -%}\n"
    "                        {%- if role == 'model' -%}\n"
    "                            {{- strip_thinking(item['text']) -}}\n"
    "                        {%- else -%}\n"
    "                            {{- item['text'] | trim -}}\n"
    "                        {%- endif -%}\n"
    "                    {%- elif item.get('type') in ['image', 'image_url'] -%}\n"
    "                        {{- '<|image|>' -}}\n"
    "                    {%- elif item.get('type') in ['audio', 'input_audio'] -%}\n"
    "                        {{- '<|audio|>' -}}\n"
    "                    {%- elif item.get('type') == 'video' -%}\n"
    "                        {{- '<|video|>' -}}\n"
    "                    {%- endif -%}\n"
    "                {%- endfor -%}\n"
    "            {%- endif -%}\n"
    "            {%- endset -%}\n"
    "\n"
    "            {{- captured_content -}}\n"
    "            {%- set has_content = captured_content | trim | length > 0 -%}\n"
    "\n"
    "        {#- Forward-scan: find next non-tool message role for continuation detection -#}\n"
    "        {%- set next_nt = namespace(role=None, found=false) -%}\n"
    "        {%- for j in range(loop.index0 + 1, loop_messages | length) -%}\n"
    "            {%- if not next_nt.found -%}\n"
    "                {%- if loop_messages[j]['role'] != 'tool' -%}\n"
    "                    {%- set next_nt.role = loop_messages[j]['role'] -%}\n"
    "                    {%- set next_nt.found = true -%}\n"
    "                {%- endif -%}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "\n"
    "        {%- set continues_into_next = (\n"
    "            role == 'model'\n"
    "            and next_nt.role == 'assistant'\n"
    "            and (not message.get('tool_calls') or ns_tr_out.flag)\n"
    "        ) -%}\n"
    "\n"
    "        {%- if ns.prev_message_type == 'tool_call' and not ns_tr_out.flag -%}\n"
    "            {{- '<|tool_response>' -}}\n"
    "        {%- elif continues_into_next -%}\n"
    "        {%- elif not (ns_tr_out.flag and not has_content and not next_nt.found) -%}\n"
    "            {{- '<turn|>\\n' -}}\n"
    "        {%- endif -%}\n"
    "\n"
    "    {#- Track previous non-tool role for next iteration (avoids O(n) backward scan) -#}\n"
    "    {%- set ns.prev_non_tool_role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "\n"
    "{%- if add_generation_prompt -%}\n"
    "    {%- if ns.prev_message_type != 'tool_response' and ns.prev_message_type != 'tool_call' -%}\n"
    "        {{- '<|turn>model\\n' -}}\n"
    "    {%- elif ns.prev_message_type == 'tool_response' and enable_thinking -%}\n"
    "        {{- '<|channel>thought\\n' -}}\n"
    "    {%- endif -%}\n"
    "{%- endif -%}\n"
)

# google/gemma-4-31B-it's (and -26B-A4B-it's): the same but for a blank line and, without thinking, an empty thought
# channel closing the generation prompt [the SHA-256 the same table gives for those files]
GEMMA4_LARGE_CHAT_TEMPLATE = GEMMA4_CHAT_TEMPLATE.replace(
    "{{- '<|turn>' + role + '\\n' }}\n    {%- endif -%}", "{{- '<|turn>' + role + '\\n' }}\n\n    {%- endif -%}"
).replace(
    "        {{- '<|turn>model\\n' -}}\n    {%- elif",
    "        {{- '<|turn>model\\n' -}}\n        {%- if not enable_thinking -%}\n"
    "            {{- '<|channel>thought\\n<channel|>' -}}\n        {%- endif -%}\n    {%- elif")

# HuggingFaceTB/SmolLM3-3B chat_template.jinja [the smollm3 entry of a Swift collection of templates; the Hub page's
# text, read through a mirror, agrees as far as the mirror showed it]: thinking unless enable_thinking is false or the
# system message says /no_think; today's date (strftime_now) in the system block
SMOLLM3_CHAT_TEMPLATE = (
    "{# ───── defaults ───── #}\n"
    "{%- if enable_thinking is not defined -%}\n"
    "{%- set enable_thinking = true -%}\n"
    "{%- endif -%}\n"
    "\n"
    "{# ───── reasoning mode ───── #}\n"
    "{%- if enable_thinking -%}\n"
    '{%- set reasoning_mode = "/think" -%}\n'
    "{%- else -%}\n"
    '{%- set reasoning_mode = "/no_think" -%}\n'
    "{%- endif -%}\n"
    "\n"
    "{# ───── header (system message) ───── #}\n"
    '{{- "<|im_start|>system\\n" -}}\n'
    "\n"
    '{%- if messages[0].role == "system" -%}\n'
    "{%- set system_message = messages[0].content -%}\n"
    '{%- if "/no_think" in system_message -%}\n'
    '{%- set reasoning_mode = "/no_think" -%}\n'
    '{%- elif "/think" in system_message -%}\n'
    '{%- set reasoning_mode = "/think" -%}\n'
    "{%- endif -%}\n"
    '{%- set custom_instructions = system_message.replace("/no_think", "").replace("/think", "").rstrip() -%}\n'
    "{%- endif -%}\n"
    "\n"
    '{%- if "/system_override" in system_message -%}\n'
    '{{- custom_instructions.replace("/system_override", "").rstrip() -}}\n'
    '{{- "<|im_end|>\\n" -}}\n'
    "{%- else -%}\n"
    '{{- "## Metadata\\n\\n" -}}\n'
    '{{- "Knowledge Cutoff Date: June 2025\\n" -}}\n'
    '{%- set today = strftime_now("%d %B %Y") -%}\n'
    '{{- "Today Date: " ~ today ~ "\\n" -}}\n'
    '{{- "Reasoning Mode: " + reasoning_mode + "\\n\\n" -}}\n'
    "\n"
    '{{- "## Custom Instructions\\n\\n" -}}\n'
    "{%- if custom_instructions -%}\n"
    '{{- custom_instructions + "\\n\\n" -}}\n'
    '{%- elif reasoning_mode == "/think" -%}\n'
    '{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves '
    "thoroughly exploring questions through a systematic thinking process before providing the final precise and "
    "accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, "
    "reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please "
    "structure your response into two main sections: Thought and Solution using the specified format: <think> Thought "
    "section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each step "
    "should include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming "
    "new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In "
    "the Solution section, based on various attempts, explorations, and reflections from the Thought section, "
    "systematically present the final solution that you deem correct. The Solution section should be logical, "
    'accurate, and concise and detail necessary steps needed to reach the conclusion.\\n\\n" -}}\n'
    "{%- else -%}\n"
    '{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\\n\\n" -}}\n'
    "{%- endif -%}\n"
    "\n"
    "{%- if xml_tools or python_tools -%}\n"
    '{{- "### Tools\\n\\n" -}}\n'
    "{%- if xml_tools -%}\n"
    '  {%- set ns = namespace(xml_tool_string="You may call one or more functions to assist with the user query.\\nYou '
    'are provided with function signatures within <tools></tools> XML tags:\\n\\n<tools>\\n") -%}\n'
    "  {%- for tool in xml_tools[:] -%} {# The slicing makes sure that xml_tools is a list #}\n"
    '    {%- set ns.xml_tool_string = ns.xml_tool_string ~ (tool | string) ~ "\\n" -%}\n'
    "  {%- endfor -%}\n"
    '  {%- set xml_tool_string = ns.xml_tool_string + "</tools>\\n\\nFor each function call, return a json object with '
    'function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>" -%}\n'
    "  {{- xml_tool_string -}}\n"
    "{%- endif -%}\n"
    "{%- if python_tools -%}\n"
    "  {%- set ns = namespace(python_tool_string=\"When you send a message containing Python code between '<code>' and "
    "'</code>' tags, it will be executed in a stateful Jupyter notebook environment, and you will then be given the "
    "output to continued reasoning in an agentic loop.\\n\\nYou can use the following tools in your python code like "
    'regular functions:\\n<tools>\\n") -%}\n'
    "  {%- for tool in python_tools[:] -%} {# The slicing makes sure that python_tools is a list #}\n"
    '    {%- set ns.python_tool_string = ns.python_tool_string ~ (tool | string) ~ "\\n" -%}\n'
    "  {%- endfor -%}\n"
    '  {%- set python_tool_string = ns.python_tool_string + "</tools>\\n\\nThe state persists between code executions: '
    'so variables that you define in one step are still available thereafter." -%}\n'
    "  {{- python_tool_string -}}\n"
    "{%- endif -%}\n"
    '{{- "\\n\\n" -}}\n'
    '{{- "<|im_end|>\\n" -}}\n'
    "{%- endif -%}\n"
    "{%- endif -%}\n"
    "{# ───── main loop ───── #}\n"
    "{%- for message in messages -%}\n"
    '{%- set content = message.content if message.content is string else "" -%}\n'
    '{%- if message.role == "user" -%}\n'
    '    {{ "<|im_start|>" + message.role + "\\n"  + content + "<|im_end|>\\n" }}\n'
    '{%- elif message.role == "assistant" -%}\n'
    "    {% generation %}\n"
    '    {%- if reasoning_mode == "/think" -%}\n'
    '        {{ "<|im_start|>assistant\\n" + content.lstrip("\\n") + "<|im_end|>\\n" }}\n'
    "    {%- else -%}\n"
    '        {{ "<|im_start|>assistant\\n" + "<think>\\n\\n</think>\\n" + content.lstrip("\\n") + "<|im_end|>\\n" }}\n'
    "    {%- endif -%}\n"
    "    {% endgeneration %}\n"
    '{%- elif message.role == "tool" -%}\n'
    '{{ "<|im_start|>" + "user\\n"  + content + "<|im_end|>\\n" }}\n'
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{# ───── generation prompt ───── #}\n"
    "{%- if add_generation_prompt -%}\n"
    '{%- if reasoning_mode == "/think" -%}\n'
    '    {{ "<|im_start|>assistant\\n" }}\n'
    "{%- else -%}\n"
    '    {{ "<|im_start|>assistant\\n" + "<think>\\n\\n</think>\\n"  }}\n'
    "{%- endif -%}\n"
    "{%- endif -%}"
)

# allenai/OLMo-2-1124-7B-Instruct: Tülu 3's template with a leading bos_token [third-party copies, which agree, one
# naming allenai/OLMo-2-1124-7B-SFT's tokenizer_config.json; the Instruct models are taken to share it]
OLMO2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + "
    "message['content'] + '\\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' "
    "}}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\\n'  + message['content'] + "
    "eos_token + '\\n' }}{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endif %}{% "
    "if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)

# The OLMo 3 post-trained models' chat_template.jinja, verbatim: each text's SHA-256 is the one other projects pinned
# for the Hub file (test_olmo3_templates_are_the_published_files). allenai/Olmo-3-7B-Instruct [OlmoHack-MATS's
# harbor/prompts/olmo3-instruct-rlvr-released.jinja less its packaging newline; f5186d42... is pinned for
# @6e5971d9 and for the OLMo-3-7B-Instruct GGUF]; allenai/Olmo-3.1-32B-Instruct [lmstudio-community's MLX re-upload's
# template, quoted in an mlx_lm server script; 49a944c9... is pinned for @ac0587e4, in the table where the pin of
# gemma-4-31B-it is GEMMA4_LARGE_CHAT_TEMPLATE's]; allenai/Olmo-3-7B-Think [open-instruct's "olmo_thinker" at
# d928a7c, copied with its pinned hash; 6d549883... is pinned for the repo's file at @d97e442d7cc6 and for the Think
# RLVR checkpoints']; allenai/Olmo-3-32B-Think [open-instruct's "olmo_thinker" now, its default system message "You
# are a helpful AI assistant."; eba6e269... is the copied "olmo-thinker.jinja"'s, and a read of @f2edda15216e's file
# gives its first 16 digits]. The 3.1 32B Instruct's and the 32B Think's are written as their differences from the 7B
# ones. allenai/Olmo-3.1-32B-Think's was not found (no copy, no pinned hash): it has no style and no preset.
OLMO3_CHAT_TEMPLATE = (
    "{%- set has_system = messages|selectattr('role', 'equalto', 'system')|list|length > 0 -%}{%- if not has_system -"
    "%}{{- '<|im_start|>system\n"
    "You are a helpful function-calling AI assistant. ' -}}{%- if tools is none -%}{{- 'You do not currently have acc"
    "ess to any functions. <functions></functions><|im_end|>\n"
    "' -}}{%- else -%}{{- 'You are provided with function signatures within <functions></functions> XML tags. You may"
    " call one or more functions to assist with the user query. Output any function calls within <function_calls></fu"
    "nction_calls> XML tags. Do not make assumptions about what values to plug into functions.' -}}{{- '<functions>' "
    "-}}{{- tools | tojson -}}{{- '</functions><|im_end|>\n"
    "' -}}{%- endif -%}{%- endif -%}{%- for message in messages -%}{%- if message['role'] == 'system' -%}{{- '<|im_st"
    "art|>system\n"
    "' + message['content'] -}}{%- if tools is not none -%}{{- '<functions>' -}}{{- tools | tojson -}}{{- '</function"
    "s>' -}}{%- elif message.get('functions', none) is not none -%}{{- ' <functions>' + message['functions'] + '</fun"
    "ctions>' -}}{%- endif -%}{{- '<|im_end|>\n"
    "' -}}{%- elif message['role'] == 'user' -%}{{- '<|im_start|>user\n"
    "' + message['content'] + '<|im_end|>\n"
    "' -}}{%- elif message['role'] == 'assistant' -%}{{- '<|im_start|>assistant\n"
    "' -}}{%- if message.get('content', none) is not none -%}{{- message['content'] -}}{%- endif -%}{%- if message.ge"
    "t('function_calls', none) is not none -%}{{- '<function_calls>' + message['function_calls'] + '</function_calls>"
    "' -}}{% elif message.get('tool_calls', none) is not none %}{{- '<function_calls>' -}}{%- for tool_call in messag"
    "e['tool_calls'] %}{%- if tool_call is mapping and tool_call.get('function', none) is not none %}{%- set args = t"
    "ool_call['function']['arguments'] -%}{%- set ns = namespace(arguments_list=[]) -%}{%- for key, value in args.ite"
    "ms() -%}{%- set ns.arguments_list = ns.arguments_list + [key ~ '=' ~ (value | tojson)] -%}{%- endfor -%}{%- set "
    "arguments = ns.arguments_list | join(', ') -%}{{- tool_call['function']['name'] + '(' + arguments + ')' -}}{%- i"
    "f not loop.last -%}{{ '\n"
    "' }}{%- endif -%}{% else %}{{- tool_call -}}{%- endif %}{%- endfor %}{{- '</function_calls>' -}}{%- endif -%}{%-"
    " if not loop.last -%}{{- '<|im_end|>' + '\n"
    "' -}}{%- else -%}{{- eos_token -}}{%- endif -%}{%- elif message['role'] == 'environment' -%}{{- '<|im_start|>env"
    "ironment\n"
    "' + message['content'] + '<|im_end|>\n"
    "' -}}{%- elif message['role'] == 'tool' -%}{{- '<|im_start|>environment\n"
    "' + message['content'] + '<|im_end|>\n"
    "' -}}{%- endif -%}{%- if loop.last and add_generation_prompt -%}{{- '<|im_start|>assistant\n"
    "' -}}{%- endif -%}{%- endfor -%}"
)

# the 3.1 32B Instruct's: the Olmo identity, an empty tool list taken for none, the generation prompt's newline escaped
OLMO31_CHAT_TEMPLATE = OLMO3_CHAT_TEMPLATE.replace(
    "You are a helpful function-calling AI assistant. ",
    "You are Olmo, a helpful AI assistant built by Ai2. Your date cutoff is December 2024, and your model weights are "
    "available at https://huggingface.co/allenai. ").replace(
    "{%- if tools is none -%}", "{%- if tools is none or (tools | length) == 0 -%}").replace(
    "{{- '<|im_start|>assistant\n' -}}{%- endif -%}{%- endfor -%}",
    "{{- '<|im_start|>assistant\\n' -}}{%- endif -%}{%- endfor -%}")

OLMO3_THINK_CHAT_TEMPLATE = (
    "{% set has_system = messages|selectattr('role', 'equalto', 'system')|list|length > 0 %}{% if not has_system %}{{"
    " '<|im_start|>system\n"
    "You are OLMo, a helpful function-calling AI assistant built by Ai2. Your date cutoff is November 2024, and your "
    "model weights are available at https://huggingface.co/allenai. You do not currently have access to any functions"
    ". <functions></functions><|im_end|>\n"
    "' }}{% endif %}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|im_start|>system\n"
    "' + message['content'] }}{% if message.get('functions', none) is not none %}{{ ' <functions>' + message['functio"
    "ns'] + '</functions><|im_end|>\n"
    "' }}{% else %}{{ ' You do not currently have access to any functions. <functions></functions><|im_end|>\n"
    "' }}{% endif %}{% elif message['role'] == 'user' %}{% if message.get('functions', none) is not none %}{{ '<|im_s"
    "tart|>user\n"
    "' + message['content'] + '\n"
    "' + '<functions>' + message['functions'] + '</functions><|im_end|>\n"
    "' }}{% else %}{{ '<|im_start|>user\n"
    "' + message['content'] + '<|im_end|>\n"
    "' }}{% endif %}{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n"
    "' }}{% if message.get('content', none) is not none %}{{ message['content'] }}{% endif %}{% if message.get('funct"
    "ion_calls', none) is not none %}{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}{% end"
    "if %}{% if not loop.last %}{{ '<|im_end|>' + '\n"
    "' }}{% else %}{{ eos_token }}{% endif %}{% elif message['role'] == 'environment' %}{{ '<|im_start|>environment\n"
    "' + message['content'] + '<|im_end|>\n"
    "' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "<think>' }}{% endif %}{% endfor %}"
)

# the 32B Think's: the one-line default system message
OLMO3_32B_THINK_CHAT_TEMPLATE = OLMO3_THINK_CHAT_TEMPLATE.replace(
    "You are OLMo, a helpful function-calling AI assistant built by Ai2. Your date cutoff is November 2024, and your "
    "model weights are available at https://huggingface.co/allenai. You do not currently have access to any functions. "
    "<functions></functions>", "You are a helpful AI assistant.")


# Templates stored verbatim in tests/data/chat_templates (the copies read are named in brackets, their SHA-256 pinned in
# test_stored_templates_are_the_published_files):
# openai/gpt-oss-120b's chat_template.jinja [trl 1.16's chat_templates/gptoss.jinja, "Original GPT-OSS chat template";
# the same bytes as llama.cpp's models/templates/openai-gpt-oss-120b.jinja, whose Git LFS pointer names its SHA-256],
# taken to be gpt-oss-20b's too
GPT_OSS_CHAT_TEMPLATE = (TEMPLATES / "gpt-oss.jinja").read_text(encoding="utf-8")
# Qwen/Qwen3-4B-Instruct-2507's [trl 1.16's chat_templates/qwen3_instruct_2507.jinja, "as shipped by
# Qwen/Qwen3-4B-Instruct-2507"], taken to be that of the other Instruct-2507 models (30B-A3B, 235B-A22B)
QWEN3_INSTRUCT_2507_CHAT_TEMPLATE = (TEMPLATES / "Qwen3-Instruct-2507.jinja").read_text(encoding="utf-8")


def on_day(day: datetime) -> Any:
    """A `strftime_now` for templates that date the prompt, fixed to `day`."""
    return lambda format: day.strftime(format)


SMOLLM3_DAY = on_day(datetime(2025, 7, 8))  # the date the smollm3 styles write
GPT_OSS_DAY = on_day(datetime(2025, 8, 5))  # the date the gpt-oss styles write

# a conversation whose texts have newlines and leading/trailing spaces (some templates strip them, others do not)
TURNS = [("  What is 7 times 8?\nShow your work. ", "\n7 times 8 is 56.\n"), (" And 9 times 9?", " It is 81. \n")]
MESSAGE = "Thanks!\nNow add them.  "

# (style, its model's template, the variables the template reads, the BOS the tokenizer adds, the end of an answer)
CHAT_FAMILIES = [
    ("llama3.1", LLAMA31_CHAT_TEMPLATE, dict(bos_token="<|begin_of_text|>"), "<|begin_of_text|>", "<|eot_id|>"),
    ("llama3.1", LLAMA32_CHAT_TEMPLATE, dict(bos_token="<|begin_of_text|>", date_string="26 Jul 2024"),
     "<|begin_of_text|>", "<|eot_id|>"),
    ("qwen2.5", QWEN25_CHAT_TEMPLATE, {}, "", "<|im_end|>"),
    ("qwen3", QWEN3_CHAT_TEMPLATE, {}, "", "<|im_end|>"),
    ("qwen3-nothink", QWEN3_CHAT_TEMPLATE, dict(enable_thinking=False), "", "<|im_end|>"),
    ("gemma3", GEMMA3_CHAT_TEMPLATE, dict(bos_token="<bos>"), "<bos>", "<end_of_turn>"),
    ("phi3", PHI3_CHAT_TEMPLATE, dict(eos_token="<|endoftext|>"), "", "<|end|>"),
    ("phi4-mini", PHI4_MINI_CHAT_TEMPLATE, dict(eos_token="<|endoftext|>"), "", "<|end|>"),
    ("mistral-nemo", MISTRAL_NEMO_CHAT_TEMPLATE, dict(bos_token="<s>", eos_token="</s>"), "<s>", "</s>"),
    ("qwen3.5", QWEN35_CHAT_TEMPLATE, {}, "", "<|im_end|>"),
    ("qwen3.5-nothink", QWEN35_CHAT_TEMPLATE, dict(enable_thinking=False), "", "<|im_end|>"),
    ("qwen3.5-nothink", QWEN35_SMALL_CHAT_TEMPLATE, {}, "", "<|im_end|>"),
    ("qwen3.5", QWEN35_SMALL_CHAT_TEMPLATE, dict(enable_thinking=True), "", "<|im_end|>"),
    ("smollm3", SMOLLM3_CHAT_TEMPLATE, dict(strftime_now=SMOLLM3_DAY), "", "<|im_end|>"),
    ("smollm3-nothink", SMOLLM3_CHAT_TEMPLATE, dict(enable_thinking=False, strftime_now=SMOLLM3_DAY), "",
     "<|im_end|>"),
    # the OLMo 2 tokenizer adds no BOS: the style writes the template's
    ("olmo2", OLMO2_CHAT_TEMPLATE, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"), "", "<|endoftext|>"),
    ("gemma4", GEMMA4_CHAT_TEMPLATE, dict(bos_token="<bos>"), "<bos>", "<turn|>"),
    ("gemma4-think", GEMMA4_CHAT_TEMPLATE, dict(bos_token="<bos>", enable_thinking=True), "<bos>", "<turn|>"),
    ("gemma4-think", GEMMA4_LARGE_CHAT_TEMPLATE, dict(bos_token="<bos>", enable_thinking=True), "<bos>", "<turn|>"),
    ("gemma4-nothink", GEMMA4_LARGE_CHAT_TEMPLATE, dict(bos_token="<bos>"), "<bos>", "<turn|>"),
    ("qwen3-instruct-2507", QWEN3_INSTRUCT_2507_CHAT_TEMPLATE, {}, "", "<|im_end|>"),
    # the last answer of a finished conversation ends with <|return|>, the earlier ones with <|end|>
    ("gpt-oss", GPT_OSS_CHAT_TEMPLATE, dict(strftime_now=GPT_OSS_DAY), "", "<|return|>"),
    ("gpt-oss-low", GPT_OSS_CHAT_TEMPLATE, dict(strftime_now=GPT_OSS_DAY, reasoning_effort="low"), "", "<|return|>"),
    ("gpt-oss-high", GPT_OSS_CHAT_TEMPLATE, dict(strftime_now=GPT_OSS_DAY, reasoning_effort="high"), "",
     "<|return|>"),
]
# the OLMo 3 templates end a finished conversation's last answer with eos_token and the earlier ones with <|im_end|>
# (transformers passes tools=None, which their system turn reads)
OLMO3_VARIABLES = dict(tools=None, eos_token="<|endoftext|>")
OLMO3_FAMILIES = [
    ("olmo3", OLMO3_CHAT_TEMPLATE, OLMO3_VARIABLES, "", "<|endoftext|>"),
    ("olmo3.1", OLMO31_CHAT_TEMPLATE, OLMO3_VARIABLES, "", "<|endoftext|>"),
    ("olmo3-think", OLMO3_THINK_CHAT_TEMPLATE, OLMO3_VARIABLES, "", "<|endoftext|>"),
    ("olmo3-32b-think", OLMO3_32B_THINK_CHAT_TEMPLATE, OLMO3_VARIABLES, "", "<|endoftext|>"),
]
EARLIER_ANSWERS_END = {**{family[0]: "<|im_end|>" for family in OLMO3_FAMILIES},
                       **{name: "<|end|>" for name in ("gpt-oss", "gpt-oss-low", "gpt-oss-high")}}
# what a style's prompt for an answer ends with that its template leaves out of a finished conversation's answers
DROPPED_FROM_HISTORY = {"gemma4-nothink": "<|channel>thought\n<channel|>", "olmo3-think": "<think>",
                        "olmo3-32b-think": "<think>"}


@pytest.mark.parametrize("name, template, variables, bos, end", CHAT_FAMILIES + OLMO3_FAMILIES)
def test_chat_styles_are_published_templates(name: str, template: str, variables: dict, bos: str, end: str) -> None:
    """What a style renders is what its model's template renders with add_generation_prompt=True, less the BOS that
    the tokenizer adds itself."""
    style = PromptStyle.from_name(name)
    assert bos + style.apply_conversation(TURNS, MESSAGE) == render(template, chat_messages(TURNS, MESSAGE),
                                                                    **variables)
    for instruction, input in EXAMPLES:
        user = [{"role": "user", "content": user_content(instruction, input)}]
        assert bos + style.apply(instruction, input) == render(template, user, **variables)
        # the training text (prompt, response prefix, answer) is the template's rendering of the finished exchange,
        # which then ends the answer with `end`; generation stops there (Mistral Nemo's </s> is its eos)
        full = render(template, user + [{"role": "assistant", "content": "It is 56."}], False, **variables)
        prompt = style.apply(instruction, input).removesuffix(DROPPED_FROM_HISTORY.get(name, ""))
        assert full.startswith(bos + prompt + style.response_prefix + "It is 56." + end)
    assert end == "</s>" or end in style.stop_strings


def test_llama32_template_dates_with_today() -> None:
    """Llama 3.2's template writes today's date where 3.1's and 3.3's write 26 Jul 2024; the style keeps the latter,
    the only difference."""
    style = PromptStyle.from_name("llama3.1")
    rendered = render(LLAMA32_CHAT_TEMPLATE, chat_messages(TURNS, MESSAGE), bos_token="<|begin_of_text|>")
    today = datetime.now().strftime("%d %b %Y")
    assert rendered == "<|begin_of_text|>" + style.apply_conversation(TURNS, MESSAGE).replace("26 Jul 2024", today)


def test_qwen3_drops_earlier_reasoning() -> None:
    """Earlier answers keep only their text after </think>, newlines in front stripped, as the templates do; an
    answer without reasoning stays as it is (Qwen3.5 strips it)."""
    turns = [("What is 7 times 8?", "<think>\n7 * 8 = 56\n</think>\n\n56."), ("And 9 times 9?", "\n\n81.\n")]
    for name, template, variables in [("qwen3", QWEN3_CHAT_TEMPLATE, {}),
                                      ("qwen3-nothink", QWEN3_CHAT_TEMPLATE, dict(enable_thinking=False)),
                                      ("qwen3.5", QWEN35_CHAT_TEMPLATE, {}),
                                      ("qwen3.5-nothink", QWEN35_SMALL_CHAT_TEMPLATE, {})]:
        prompt = PromptStyle.from_name(name).apply_conversation(turns, "Add them.")
        assert prompt == render(template, chat_messages(turns, "Add them."), **variables)
        assert "7 * 8" not in prompt and "<|im_start|>assistant\n56.<|im_end|>" in prompt


def test_qwen35_prompts_open_the_think_block() -> None:
    """Qwen3.5's prompt ends inside an open think block where Qwen3's stops before it (the model opens it); without
    thinking both end with an empty one. The small models' template has the opposite default, so their presets get
    qwen3.5-nothink; a finished conversation's final reasoning goes in its answer."""
    empty = "assistant\n<think>\n\n</think>\n\n"
    endings = {"qwen3": "assistant\n", "qwen3.5": "assistant\n<think>\n", "qwen3-nothink": empty,
               "qwen3.5-nothink": empty}
    for name, ending in endings.items():
        assert PromptStyle.from_name(name).apply("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>" + ending
    user = [{"role": "user", "content": "Hi"}]
    assert render(QWEN35_SMALL_CHAT_TEMPLATE, user) == render(QWEN35_CHAT_TEMPLATE, user, enable_thinking=False)
    assert render(QWEN35_SMALL_CHAT_TEMPLATE, user, enable_thinking=True) == render(QWEN35_CHAT_TEMPLATE, user)
    turns = [("Add 2 and 2.", "<think>\n2 + 2 = 4\n</think>\n\nFour.")]
    for name in ("qwen3.5", "qwen3.5-nothink"):
        pieces = PromptStyle.from_name(name).conversation_pieces(turns)
        assert "".join(pieces) + "\n" == render(QWEN35_CHAT_TEMPLATE, finished_messages(turns), False)
        assert pieces[1].startswith("2 + 2 = 4") if name == "qwen3.5" else pieces[1].startswith("<think>\n2 + 2")


def test_gemma4_templates_are_the_published_files() -> None:
    """The stored E2B/E4B template and the 31B/26B-A4B one derived from it are, byte for byte, the Hub's files."""
    assert hashlib.sha256(GEMMA4_CHAT_TEMPLATE.encode()).hexdigest() == (
        "0a2c8073c878ab1da004bee933a998606537bbb62016310352c7285c3f01c5b5")
    assert len(GEMMA4_CHAT_TEMPLATE.encode()) == 18569
    assert hashlib.sha256(GEMMA4_LARGE_CHAT_TEMPLATE.encode()).hexdigest() == (
        "ae53464bf3be25802b3a5b37def7fd89667067d7577049b3b2d74c4d8de4c6d4")


def test_gemma4_drops_thoughts_and_closes_an_empty_one_on_the_large_models() -> None:
    """Answers lose their thought channels, as both templates write them; with thinking the system turn opens with
    <|think|> and both templates prompt alike; without it the large models' prompt closes an empty thought channel,
    which a finished conversation does not have before any answer, as the template renders it."""
    turns = [("What is 7 times 8?", "<|channel>thought\n7 * 8 = 56<channel|>56."), ("And 9 times 9?", " 81.\n")]
    for name, template, variables in [("gemma4", GEMMA4_CHAT_TEMPLATE, {}),
                                      ("gemma4-think", GEMMA4_LARGE_CHAT_TEMPLATE, dict(enable_thinking=True)),
                                      ("gemma4-nothink", GEMMA4_LARGE_CHAT_TEMPLATE, {})]:
        prompt = PromptStyle.from_name(name).apply_conversation(turns, "Add them.")
        assert "<bos>" + prompt == render(template, chat_messages(turns, "Add them."), bos_token="<bos>", **variables)
        assert "7 * 8" not in prompt and "<|turn>model\n56.<turn|>\n" in prompt
    user = "<|turn>user\nHi<turn|>\n<|turn>model\n"
    assert PromptStyle.from_name("gemma4").apply(" Hi ") == user
    assert PromptStyle.from_name("gemma4-think").apply("Hi") == "<|turn>system\n<|think|>\n<turn|>\n" + user
    assert PromptStyle.from_name("gemma4-nothink").apply("Hi") == user + "<|channel>thought\n<channel|>"
    hi = [{"role": "user", "content": "Hi"}]
    assert render(GEMMA4_CHAT_TEMPLATE, hi, enable_thinking=True) == render(GEMMA4_LARGE_CHAT_TEMPLATE, hi,
                                                                           enable_thinking=True)
    assert "<channel|>" not in "".join(PromptStyle.from_name("gemma4-nothink").conversation_pieces(turns))


def test_smollm3_system_flags_and_date() -> None:
    """SmolLM3's system message switches the reasoning mode with /think or /no_think (the flags taken out of it) and
    replaces the whole system block with /system_override, as the template does; the template dates the prompt with
    today, the style with 08 July 2025, the only difference."""
    for system in ("/no_think Be brief.", "Be brief. /think", "/no_think", "/system_override You are a calculator. ",
                   SYSTEM):
        for name, variables in (("smollm3", {}), ("smollm3-nothink", dict(enable_thinking=False))):
            messages = [{"role": "system", "content": system}] + chat_messages(TURNS, MESSAGE)
            prompt = PromptStyle.from_name(name).apply_conversation(TURNS, MESSAGE, system=system)
            assert prompt == render(SMOLLM3_CHAT_TEMPLATE, messages, strftime_now=SMOLLM3_DAY, **variables), system
            if "think" in system:
                assert prompt.endswith("<think>\n\n</think>\n") == ("/no_think" in system)
    assert "## Custom Instructions\n\nBe brief.\n\n<|im_start|>user" in PromptStyle.from_name(
        "smollm3-nothink").apply_conversation([], "Hi", system="Be brief. /think")
    today = datetime.now().strftime("%d %B %Y")
    for name, variables in (("smollm3", {}), ("smollm3-nothink", dict(enable_thinking=False))):
        rendered = render(SMOLLM3_CHAT_TEMPLATE, chat_messages(TURNS, MESSAGE), **variables)
        assert rendered == PromptStyle.from_name(name).apply_conversation(TURNS, MESSAGE).replace("08 July 2025", today)


def test_finetuning_ends_an_answer_with_the_templates_end_of_turn(tmp_path: Path) -> None:
    """Gemma 3, Gemma 4 and Phi end an answer with <end_of_turn> / <turn|> / <|end|>, not their tokenizers' eos: text
    ends with that token, as the template renders a finished turn; other styles end with eos."""
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from lit_gpt.data import prepare_sample

    words = ["<unk>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|end|>",
             "<|turn>", "<turn|>", "user", "model", "hi", "hello", "there", "\n"]
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens([AddedToken(w, special=True, normalized=False) for w in words[:10]])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                                "add_bos_token": True}))
    tokenizer = Tokenizer(tmp_path)
    example = {"instruction": "hi", "output": "hello there"}
    for name, end in [("gemma3", "<end_of_turn>"), ("gemma4", "<turn|>"), ("phi3", "<|end|>"), ("phi4-mini", "<|end|>"),
                      ("alpaca", "<eos>")]:
        sample = prepare_sample(example, tokenizer, PromptStyle.from_name(name), max_seq_length=64)
        assert sample["input_ids"][-1] == words.index(end), name
        assert sample["input_ids"][-3:-1].tolist() == [words.index("hello"), words.index("there")], name
        assert sample["labels"][-1] == words.index(end)


SYSTEM = "You are a terse math tutor.\nAnswer with the result. "  # a trailing space: some templates strip it
# (style, template, variables, the BOS the tokenizer adds, the end of an answer): every chat style but chatml, whose
# template comes from the SmolLM2 GGUF
SYSTEM_FAMILIES = CHAT_FAMILIES + [
    ("llama2-chat", LLAMA2_CHAT_TEMPLATE, dict(bos_token="<s>", eos_token="</s>"), "<s>", "</s>"),
    ("tinyllama-chat", TINYLLAMA_CHAT_TEMPLATE, dict(bos_token="<s>", eos_token="</s>"), "", "</s>"),
]


def finished_messages(turns: list, system: str = None) -> list:
    messages = [{"role": "system", "content": system}] if system else []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages


def check_system_and_pieces(name: str, template: str, variables: dict, bos: str, end: str) -> None:
    style = PromptStyle.from_name(name)
    system_turn = [{"role": "system", "content": SYSTEM}]
    # a prompt with a system message is what the template renders with it
    assert bos + style.apply_conversation(TURNS, MESSAGE, system=SYSTEM) == render(
        template, system_turn + chat_messages(TURNS, MESSAGE), **variables)
    turns = TURNS + [(MESSAGE, "\nThe sum is 137. ")]
    for system in (None, SYSTEM):
        pieces = style.conversation_pieces(turns, system=system)
        ends = [EARLIER_ANSWERS_END.get(name, end)] * (len(turns) - 1) + [end]
        assert len(pieces) == 2 * len(turns) and all(map(str.endswith, pieces[1::2], ends))
        # the finished conversation is the template's rendering of it, less what follows the last end of turn
        # the Llama 2 and TinyLlama templates have no default system message: the style's is passed to them
        given = system or (style.system if name in ("llama2-chat", "tinyllama-chat") else None)
        rendered = render(template, finished_messages(turns, given), False, **variables)
        ours = bos + "".join(pieces)
        if name == "mistral-nemo" and system:  # its template drops the system message when an answer comes last
            ours = ours.replace(f"{SYSTEM}\n\n", "")
        assert rendered.startswith(ours), (rendered, ours)
        eos = variables.get("eos_token", "")
        assert rendered[len(ours):] in ("", "\n", eos, "\n" + eos), rendered[len(ours):]
        # the prompt before the last answer is the prompt generation shows at that point (but for what the
        # template leaves out of an answer it renders)
        assert "".join(pieces[:-1]) + DROPPED_FROM_HISTORY.get(name, "") == style.apply_conversation(
            turns[:-1], MESSAGE, system=system)


@pytest.mark.parametrize("name, template, variables, bos, end", SYSTEM_FAMILIES + OLMO3_FAMILIES)
def test_system_messages_and_finished_conversations_are_the_templates(name: str, template: str, variables: dict,
                                                                      bos: str, end: str) -> None:
    """A given system message is rendered where and as each template renders it (ChatML/Qwen replace their default
    system turn, Llama 3.1 writes it after the dates, Gemma 3 before the first user message, Phi a <|system|> turn,
    Mistral Nemo before the last user message, Llama 2 in <<SYS>>, TinyLlama a <|system|> turn, OLMo 3 in its system
    turn, the Think ones followed by a no-functions line); a finished conversation in pieces is the template's
    rendering, each answer piece ending with the end-of-turn token (OLMo 3: the last one with eos)."""
    check_system_and_pieces(name, template, variables, bos, end)


def test_olmo3_templates_are_the_published_files() -> None:
    """The stored OLMo 3 templates are, byte for byte, the files whose SHA-256 others pinned at the Hub revisions."""
    for template, sha256 in [
        (OLMO3_CHAT_TEMPLATE, "f5186d42d99c8a0445d37fd8a6c7ccf07fe3e24a29ce622d8bd245da9507b12b"),
        (OLMO31_CHAT_TEMPLATE, "49a944c9814e130bd3cc80a2420c55ff22e24a4e4ba97009aa60000909b5eac3"),
        (OLMO3_THINK_CHAT_TEMPLATE, "6d549883b5ed12879e191845c256a30c7dfd4eced0a4f160060a3ea0199d9e3a"),
        (OLMO3_32B_THINK_CHAT_TEMPLATE, "eba6e269f669706e5c788e370160dad953137f3fa7014fa69d03c7b3ad9f0e72"),
    ]:
        assert hashlib.sha256(template.encode()).hexdigest() == sha256


def test_olmo3_think_keeps_earlier_reasoning_and_opens_the_block() -> None:
    """The Think templates write earlier answers as they are, reasoning included, and open the think block for the
    next one; the Instruct ones do neither. The default system messages are each template's."""
    turns = [("What is 7 times 8?", "7 * 8 = 56</think>\n\n56."), ("And 9 times 9?", "<think>9 * 9</think>81.")]
    for name, template, variables, _, _ in OLMO3_FAMILIES:
        style = PromptStyle.from_name(name)
        prompt = style.apply_conversation(turns, "Add them.")
        assert prompt == render(template, chat_messages(turns, "Add them."), **variables)
        assert "<|im_start|>assistant\n7 * 8 = 56</think>\n\n56.<|im_end|>\n" in prompt
        assert prompt.startswith(f"<|im_start|>system\n{style.system}<|im_end|>\n<|im_start|>user\n")
        assert prompt.endswith("<|im_start|>assistant\n" + ("<think>" if "think" in name else ""))
    assert PromptStyle.from_name("olmo3-32b-think").system == "You are a helpful AI assistant."


@pytest.mark.parametrize("name, template, variables, bos, end", OLMO3_FAMILIES)
def test_olmo3_labels_end_earlier_answers_with_im_end_and_the_last_with_eos(name: str, template: str, variables: dict,
                                                                            bos: str, end: str,
                                                                            smollm2_dir: Path) -> None:
    """A conversation's tokens (SmolLM2's tokenizer knows <|im_start|>, <|im_end|> and <|endoftext|>) are the template's
    rendering; the labels sit on each answer and its end: <|im_end|> for the earlier ones, eos for the last."""
    from lit_gpt.data import IGNORE_INDEX, prepare_conversation

    tokenizer = Tokenizer(smollm2_dir)
    turns = [("What is 7 times 8?", "7 * 8 = 56\n#### 56"), (" And 9 times 9?", "It is 81. "), (MESSAGE, "137.")]
    sample = prepare_conversation({"system": SYSTEM, "turns": turns}, tokenizer, PromptStyle.from_name(name), 1000)
    ids, labelled = sample["input_ids"], (sample["labels"] != IGNORE_INDEX).tolist()
    assert tokenizer.decode(ids) == render(template, finished_messages(turns, SYSTEM), False, **variables)
    starts = [i for i, on in enumerate(labelled) if on and (i == 0 or not labelled[i - 1])]
    stops = [i + 1 for i, on in enumerate(labelled) if on and (i + 1 == len(labelled) or not labelled[i + 1])]
    assert [tokenizer.decode(ids[a:b]) for a, b in zip(starts, stops)] == [
        answer + ("<|im_end|>" if i < len(turns) - 1 else end) for i, (_, answer) in enumerate(turns)]


def test_chatml_system_message_is_smollm2_template(smollm2_chat_template: str) -> None:
    check_system_and_pieces("chatml", smollm2_chat_template, {}, "", "<|im_end|>")


def test_plain_styles_chain_turns_after_a_system_paragraph() -> None:
    style = PromptStyle.from_name("qa")
    assert style.conversation_pieces(CONVERSATION, "Add them.", system="Be brief.") == [
        "Be brief.\n\nQ: What is 7 times 8?\nA:", " 56.", "\nQ:   And 9 times 9? \nA:", "  It is 81.",
        "\nQ: Add them.\nA:"]
    for name in ("alpaca", "qa", "falcon-instruct"):
        style = PromptStyle.from_name(name)
        assert style.apply_conversation(CONVERSATION, "Add them.", system="Be brief.") == (
            "Be brief.\n\n" + style.apply_conversation(CONVERSATION, "Add them."))
        assert style.conversation_pieces(CONVERSATION)[1::2] == [style.response_prefix + a for _, a in CONVERSATION]


def test_stored_templates_are_the_published_files() -> None:
    """tests/data/chat_templates holds the templates byte for byte: gpt-oss's is the file whose SHA-256 and size
    llama.cpp's Git LFS pointer of openai-gpt-oss-120b.jinja names."""
    for name, sha256, size in [
        ("gpt-oss.jinja", "a4c9919cbbd4acdd51ccffe22da049264b1b73e59055fa58811a99efbd7c8146", 16738),
        ("Qwen3-Instruct-2507.jinja", "64f85b198065d0fba2a81f37e10ed68161ce2c19a754c7100e67e0ca2ee9c326", 2630),
    ]:
        data = (TEMPLATES / name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha256, size), name


def transformers_render(template: str, messages: list, add_generation_prompt: bool = True, **variables: Any) -> str:
    """transformers' own rendering (apply_chat_template's), which dates the prompt with today."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **variables)
    return rendered[0]


# an answer as gpt-oss writes it: reasoning in the analysis channel, then the final one
HARMONY_ANSWER = "<|channel|>analysis<|message|>9 * 9 = 81<|end|><|start|>assistant<|channel|>final<|message|> 81. \n"


def harmony_messages(turns: list, message: str = None, system: str = None) -> list:
    """The template's messages for a conversation: an answer's final text as content, its reasoning as thinking."""
    messages = [{"role": "system", "content": system}] if system else []
    for user, answer in turns:
        reasoning, text = harmony_answer(answer)
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": text, **({"thinking": reasoning} if reasoning else {})}]
    return messages + ([{"role": "user", "content": message}] if message is not None else [])


@pytest.mark.parametrize("name, effort", [("gpt-oss", None), ("gpt-oss-low", "low"), ("gpt-oss-high", "high")])
def test_gpt_oss_is_transformers_rendering_of_its_template(name: str, effort: str) -> None:
    """The harmony prompt is transformers' apply_chat_template rendering of gpt-oss's template (its default reasoning
    effort medium, or the one given), today's date there where the style writes 2025-08-05: the system header, a
    system message as the developer message, user turns, earlier answers' final channel without their reasoning, and
    the generation prompt "<|start|>assistant". A finished conversation keeps the last answer's reasoning and ends it
    with <|return|>."""
    style, today = PromptStyle.from_name(name), datetime.now().strftime("%Y-%m-%d")
    variables = dict(reasoning_effort=effort) if effort else {}
    turns = [TURNS[0], (TURNS[1][0], HARMONY_ANSWER)]
    for system in (None, SYSTEM):
        prompt = style.apply_conversation(turns, MESSAGE, system=system)
        assert prompt.replace("2025-08-05", today) == transformers_render(
            GPT_OSS_CHAT_TEMPLATE, harmony_messages(turns, MESSAGE, system), **variables)
        assert "9 * 9" not in prompt and prompt.endswith(f"<|start|>user<|message|>{MESSAGE}<|end|><|start|>assistant")
        finished = "".join(style.conversation_pieces(turns, system=system))
        assert finished.replace("2025-08-05", today) == transformers_render(
            GPT_OSS_CHAT_TEMPLATE, harmony_messages(turns, system=system), False, **variables)
        assert finished.endswith("<|channel|>analysis<|message|>9 * 9 = 81<|end|><|start|>assistant"
                                 "<|channel|>final<|message|> 81. \n<|return|>")
    assert f"Reasoning: {effort or 'medium'}\n\n# Valid channels: analysis, commentary, final." in prompt
    assert "<|start|>developer<|message|># Instructions\n\n" + SYSTEM + "\n\n<|end|>" in prompt


def test_harmony_answers_are_parsed_as_the_template_reads_them() -> None:
    """The final text is what follows the last final channel, the reasoning that of the analysis message before it;
    a plain answer is all final text, one cut off while reasoning has none."""
    assert harmony_answer(HARMONY_ANSWER) == ("9 * 9 = 81", " 81. \n")
    assert harmony_answer("<|channel|>final<|message|>81.") == ("", "81.")
    assert harmony_answer(" It is 81. ") == ("", " It is 81. ")
    assert harmony_answer("<|channel|>analysis<|message|>9 * 9 is") == ("9 * 9 is", "")
    # why the style parses answers: the template refuses channels in a message's content
    with pytest.raises(TemplateError, match=re.escape("<|channel|> tags in the content field")):
        transformers_render(GPT_OSS_CHAT_TEMPLATE, chat_messages([("Hi", HARMONY_ANSWER)], "Hi"))


def test_gpt_oss_stops_at_return_and_call_not_at_end(tmp_path: Path) -> None:
    """Generation stops at <|return|> (the answer's end, what finetuning appends) and <|call|> (a tool call), not at
    <|end|>, which ends the reasoning message before the final one; the training text of an instruction is the prompt,
    the final channel, the answer and <|return|>."""
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from lit_gpt.data import prepare_sample

    special = ["<|endoftext|>", "<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>"]
    words = ["<unk>", *special, "final", "assistant", "hello", "there"]
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens([AddedToken(w, special=True, normalized=False) for w in special])
    hf.save(str(tmp_path / "tokenizer.json"))
    # as gpt-oss's tokenizer_config.json and generation_config.json name them
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|return|>",
                                                                "pad_token": "<|endoftext|>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [words.index("<|return|>"),
                                                                                  words.index("<|endoftext|>"),
                                                                                  words.index("<|call|>")]}))
    tokenizer, style = Tokenizer(tmp_path), PromptStyle.from_name("gpt-oss")
    stops = style.stop_tokens(tokenizer)
    assert [words[i] for i, in stops] == ["<|return|>", "<|endoftext|>", "<|call|>"]
    sample = prepare_sample({"instruction": "hi", "output": "hello there"}, tokenizer, style, max_seq_length=256)
    assert [words[i] for i in sample["input_ids"][-8:].tolist()] == [
        "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "hello", "there", "<|return|>"]


def test_qwen3_instruct_2507_keeps_answers_as_they_are() -> None:
    """The Instruct-2507 template writes every answer as it is (no reasoning to drop, unlike Qwen3's) and no system
    turn of its own (unlike Qwen2.5's)."""
    turns = [("What is 7 times 8?", "<think>\n7 * 8 = 56\n</think>\n\n56."), ("And 9 times 9?", "\n\n81.\n")]
    prompt = PromptStyle.from_name("qwen3-instruct-2507").apply_conversation(turns, "Add them.")
    assert prompt == transformers_render(QWEN3_INSTRUCT_2507_CHAT_TEMPLATE, chat_messages(turns, "Add them."))
    assert prompt.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n<think>\n7 * 8 = 56" in prompt
