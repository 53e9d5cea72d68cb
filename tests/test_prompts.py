import json
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lit_gpt.config import Config, name_to_config
from lit_gpt.prompts import (
    PromptStyle,
    default_prompt_style,
    has_prompt_style,
    load_prompt_style,
    prompt_styles,
    resolve_prompt_style,
    save_prompt_style,
)
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import UserError

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


def render(template: str, messages: list, add_generation_prompt: bool = True, **special: str) -> str:
    """Renders a chat template the way transformers' apply_chat_template does (sandboxed jinja2, trimmed blocks)."""
    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
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


def test_default_prompt_style_for_every_preset() -> None:
    expected = {"Llama-2-7b-chat-hf": "llama2-chat", "Llama-2-70b-chat-hf": "llama2-chat",
                "TinyLlama-1.1B-Chat-v1.0": "tinyllama-chat", "SmolLM2-135M-Instruct": "chatml",
                "SmolLM2-1.7B-Instruct": "chatml", "falcon-7b-instruct": "falcon-instruct"}
    for name in name_to_config:
        style = default_prompt_style(Config.from_name(name))
        chat = any(word in name for word in ("chat", "Chat", "Instruct", "instruct"))
        assert (style.name != "alpaca") == chat, name
        if name in expected:
            assert style.name == expected[name]


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


def conversation_messages(system: str = None) -> list:
    messages = [{"role": "system", "content": system}] if system else []
    for user, answer in CONVERSATION:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": "Thanks! Now add them."}]


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
