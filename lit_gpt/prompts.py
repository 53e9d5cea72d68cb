"""Prompt styles: how an instruction (and optional input) becomes the text a model is trained on and prompted with.

Each style renders the first user turn of a conversation up to where the model's answer starts. Finetuning appends
`style.response_prefix + output` and the EOS token (or the style's `answer_end`); generation stops at any of
`style.stop_tokens(tokenizer)`. `conversation_pieces` renders a whole conversation (with an optional system message)
in pieces, prompts alternating with answers, so that finetuning on conversations can put the loss on the answers.
A prepared-data dir, a checkpoint dir and a finetune out dir all carry a `prompt_style.json` ({"name": ...}) so the
next script uses the same style without a flag.
"""

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Tuple, Union, get_args

from lit_gpt.utils import atomic_write_text, fail


class PromptStyle:
    """Base class. A style has a `name`, renders `apply(instruction, input)` and knows which tokens end an answer."""

    name: str = ""
    response_prefix: str = ""  # text between the prompt and the answer in training text (e.g. " " after "[/INST]")
    stop_strings: tuple = ()  # extra texts that end an answer besides the tokenizer's stop ids (eos)
    turn_end: str = "\n"  # in a conversation, what follows an answer before the next user turn
    answer_end: str = ""  # the token that ends an answer in training text when it is not the tokenizer's eos
    system: str = ""  # the system message a conversation gets when it has none ("": none)

    def answer_end_ids(self, tokenizer: Any) -> list[int]:
        """The ids finetuning appends to an answer: `answer_end`'s (Gemma's <end_of_turn>, Phi's <|end|>), else eos."""
        if self.answer_end:
            return encode_in_context(tokenizer, self.answer_end)
        return [tokenizer.eos_id] if tokenizer.eos_id is not None else []

    def apply(self, instruction: str, input: str = "") -> str:
        raise NotImplementedError

    def apply_conversation(self, turns: Sequence[Tuple[str, str]], message: str, system: Optional[str] = None) -> str:
        """A conversation up to where the next answer starts: the `system` message (None or "": the style's default),
        the earlier (user message, answer) turns, then the new user `message`."""
        return "".join(self.conversation_pieces(turns, message, system))

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        """The conversation as [prompt, answer, prompt, answer, ...]: each prompt is the text from the start (or the
        end of the previous answer) to where the next answer starts. With a `message` the last piece is the prompt
        for its answer; without, the conversation ends with the last answer.

        Chat styles render what their model's chat template renders (answers with their end-of-turn token, the
        system message where the template puts it). The others chain their one-turn form: prompt, response_prefix,
        answer, `turn_end`, next prompt; a system message is a first paragraph; an answer's pieces hold no end token
        (finetuning appends `answer_end_ids` after each).
        """
        system = system or self.system
        pieces, before = [], f"{system}\n\n" if system else ""
        for user, answer in turns:
            pieces += [before + self.apply(user), self.response_prefix + answer]
            before = self.turn_end
        return pieces + [before + self.apply(message)] if message is not None else pieces

    def stop_tokens(self, tokenizer: Any) -> list[list[int]]:
        """Token id sequences that end a response: the tokenizer's stop ids (eos, ...) and this style's stop strings."""
        stop_ids = getattr(tokenizer, "stop_ids", None) or [tokenizer.eos_id]
        sequences = [[int(i)] for i in stop_ids if i is not None]
        for text in self.stop_strings:
            sequences.append(encode_in_context(tokenizer, text))
        unique = []
        for seq in sequences:
            if seq and seq not in unique:
                unique.append(seq)
        return unique

    @classmethod
    def from_name(cls, name: str) -> "PromptStyle":
        if name not in prompt_styles:
            fail(f"Unknown prompt style {name!r}. Choose one of: {', '.join(prompt_styles)}")
        return prompt_styles[name]()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def encode_in_context(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` as they appear after other text: sentencepiece-style tokenizers mark the start of a string
    ("\\n" alone becomes "▁", "<0x0A>"), so encode "." + text and drop the ids of "."."""
    anchor = tokenizer.encode(".", bos=False, eos=False).tolist()
    ids = tokenizer.encode("." + text, bos=False, eos=False).tolist()
    if ids[:len(anchor)] == anchor:
        return ids[len(anchor):]
    return tokenizer.encode(text, bos=False, eos=False).tolist()


def _user_message(instruction: str, input: str) -> str:
    """The chat styles put the input (if any) after the instruction, separated by a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def _users(turns: Sequence[Tuple[str, str]], message: Optional[str]) -> list[str]:
    return [user for user, _ in turns] + ([message] if message is not None else [])


def _join_turns(head: str, prompts: list[str], answers: list[str], between: str) -> list[str]:
    """[head + prompts[0], answers[0], between + prompts[1], answers[1], ...]; `prompts` has one entry more than
    `answers` when the conversation ends with a new message."""
    pieces = []
    for i, prompt in enumerate(prompts):
        pieces.append((head if i == 0 else between) + prompt)
        pieces += answers[i:i + 1]
    return pieces


class ChatStyle(PromptStyle):
    """A model's chat template: `conversation_pieces` renders it, and one turn is a conversation without history (the
    user message being the instruction, then the input if any, separated by a blank line). An answer's piece ends
    with the template's end-of-turn token."""

    def apply(self, instruction: str, input: str = "") -> str:
        return self.apply_conversation([], _user_message(instruction, input))

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        raise NotImplementedError


class Alpaca(PromptStyle):
    """The Stanford Alpaca template (tatsu-lab/stanford_alpaca, `PROMPT_DICT`), with and without input."""

    name = "alpaca"
    turn_end = "\n\n"

    def apply(self, instruction: str, input: str = "") -> str:
        if input:
            return ("Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n"
                    f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
        return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                f"request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


class QA(PromptStyle):
    """Plain question/answer: "Q: {instruction}\\nA:" (input, if any, on its own line before "A:"); the answer
    follows after one space. Generation also stops at a new "\\nQ:" line."""

    name = "qa"
    response_prefix = " "
    stop_strings = ("\nQ:",)

    def apply(self, instruction: str, input: str = "") -> str:
        return f"Q: {instruction}\n{input}\nA:" if input else f"Q: {instruction}\nA:"


class ChatML(ChatStyle):
    """SmolLM2-*-Instruct's chat template: ChatML, with SmolLM's default system message when none is given (a given
    one replaces it). The answer ends with <|im_end|> (the Instruct tokenizer's eos)."""

    name = "chatml"
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # "": no system turn
    stop_strings = ("<|im_end|>",)

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        system = system or self.system
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        prompts = [f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n" for user in _users(turns, message)]
        answers = [self.answer(answer, last=message is None and i == len(turns) - 1) + "<|im_end|>"
                   for i, (_, answer) in enumerate(turns)]
        return _join_turns(head, prompts, answers, "\n")

    def answer(self, text: str, last: bool) -> str:
        """An assistant message as the template writes it (`last`: the final message of a finished conversation)."""
        return text


class Qwen25(ChatML):
    """Qwen2.5-*-Instruct: ChatML with the system message its template adds when none is given. No BOS (Qwen has
    none); the answer ends with <|im_end|> (the Instruct tokenizer's eos)."""

    name = "qwen2.5"
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _split_reasoning(answer: str) -> Tuple[str, str]:
    """(reasoning, text) of an answer written "<think>{reasoning}</think>{text}", as the Qwen templates split it
    (newlines around the reasoning and before the text dropped); ("", answer) when it has no "</think>"."""
    if "</think>" not in answer:
        return "", answer
    return (answer.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n"),
            answer.split("</think>")[-1].lstrip("\n"))


class Qwen3Instruct2507(ChatML):
    """Qwen3-*-Instruct-2507 (the non-thinking 2507 models): ChatML without a default system turn, every message as it
    is (the template neither strips nor parses "<think>"); the answer ends with <|im_end|> (the tokenizer's eos)."""

    name = "qwen3-instruct-2507"
    system = ""


class Qwen3(ChatML):
    """Qwen3 (the hybrid thinking models): ChatML without a default system turn, rendered as the template does by
    default (thinking enabled): the prompt ends with "<|im_start|>assistant\n" and the model writes
    "<think>...</think>" before its answer. Earlier answers keep only their text after "</think>" (the template drops
    their reasoning); the final answer of a finished conversation is "<think>\n{reasoning}\n</think>\n\n{answer}",
    the reasoning empty when it has none, hence the response_prefix: training on plain instruction data teaches the
    empty think block before the answer."""

    name = "qwen3"
    system = ""
    response_prefix = "<think>\n\n</think>\n\n"
    prompt_end = ""  # what the template writes after "<|im_start|>assistant\n" in a prompt

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        pieces, end = super().conversation_pieces(turns, message, system), self.prompt_end
        if end and message is not None:
            pieces[-1] += end
        elif end and pieces and pieces[-1].startswith(end):  # the final answer's opening belongs to its prompt
            pieces[-2:] = [pieces[-2] + end, pieces[-1][len(end):]]
        return pieces

    def answer(self, text: str, last: bool) -> str:
        reasoning, text = _split_reasoning(text)
        if not last:
            return text
        return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + text.lstrip("\n")


class Qwen3NoThink(Qwen3):
    """Qwen3 with the template's `enable_thinking=False`: the prompt ends with an empty think block, so the model
    answers at once. A finished conversation renders as with thinking; an empty think block before the final answer
    belongs to its prompt."""

    name = "qwen3-nothink"
    response_prefix = ""
    prompt_end = "<think>\n\n</think>\n\n"


class Qwen35(Qwen3):
    """Qwen3.5 (Qwen3.5-4B and larger, whose template thinks by default): Qwen3's ChatML with every message stripped
    (the system message, the user messages, the answers), and the prompt already opening the think block:
    "<|im_start|>assistant\n<think>\n". Earlier answers keep only their text after "</think>"; the final answer of a
    finished conversation is "<think>\n{reasoning}\n</think>\n\n{answer}", its "<think>\n" belonging to the prompt, so
    training on plain instruction data (response_prefix) closes an empty reasoning before the answer. No default
    system turn, no BOS; the answer ends with <|im_end|> (the tokenizer's eos)."""

    name = "qwen3.5"
    response_prefix = "\n</think>\n\n"
    prompt_end = "<think>\n"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        turns = [(user.strip(), answer) for user, answer in turns]
        return super().conversation_pieces(turns, None if message is None else message.strip(), (system or "").strip())

    def answer(self, text: str, last: bool) -> str:
        reasoning, text = _split_reasoning(text.strip())
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{text}" if last else text


class Qwen35NoThink(Qwen35):
    """Qwen3.5 without thinking: the default of Qwen3.5-0.8B's and -2B's template, `enable_thinking=False` for the
    others. The prompt ends with an empty think block, which a finished conversation's final answer (without
    reasoning) has in its prompt, as Qwen3's."""

    name = "qwen3.5-nothink"
    response_prefix = ""
    prompt_end = "<think>\n\n</think>\n\n"


class Llama2Chat(ChatStyle):
    """Llama-2-*-chat-hf: "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]" (the tokenizer adds <s>);
    the answer follows after one space and ends with " </s>", and later turns start with "<s>" (the tokenizer reads
    </s><s> as EOS and BOS). The default system message is a short version of Meta's."""

    name = "llama2-chat"
    system = "You are a helpful, respectful and honest assistant."
    response_prefix = " "

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        users = _users(turns, message)
        if users:
            users[0] = f"<<SYS>>\n{system or self.system}\n<</SYS>>\n\n{users[0]}"
        return _join_turns("", [f"[INST] {user.strip()} [/INST]" for user in users],
                           [f" {answer.strip()} </s>" for _, answer in turns], "<s>")


class TinyLlamaChat(ChatStyle):
    """TinyLlama-1.1B-Chat-v1.0 (Zephyr format): "<|system|>\\n{system}</s>\\n<|user|>\\n{user}</s>\\n<|assistant|>\\n"
    (the tokenizer adds <s>); the answer ends with </s>."""

    name = "tinyllama-chat"
    system = "You are a friendly chatbot who always gives helpful answers."

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        return _join_turns(f"<|system|>\n{system or self.system}</s>\n",
                           [f"<|user|>\n{user}</s>\n<|assistant|>\n" for user in _users(turns, message)],
                           [f"{answer}</s>" for _, answer in turns], "\n")


class Llama31(ChatStyle):
    """Llama-3.1/3.2/3.3-*-Instruct: "<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>" turns, the
    messages stripped, after the system turn the template always writes (its knowledge and "today" dates, then the
    system message if one is given; none of its own). The template starts with <|begin_of_text|>, which this style
    leaves to the tokenizer (it adds it, as Llama 2's <s>). The 3.2 template dates the prompt with the current day
    (transformers' `strftime_now`) where 3.1 and 3.3 write 26 Jul 2024: this style always writes 26 Jul 2024, so a
    prompt does not change with the day. The answer ends with <|eot_id|> (the Instruct tokenizer's eos)."""

    name = "llama3.1"
    date = "26 Jul 2024"
    stop_strings = ("<|eot_id|>",)

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        head = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                f"Today Date: {self.date}\n\n{(system or '').strip()}<|eot_id|>")
        prompts = [f"<|start_header_id|>user<|end_header_id|>\n\n{user.strip()}<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n" for user in _users(turns, message)]
        return _join_turns(head, prompts, [f"{answer.strip()}<|eot_id|>" for _, answer in turns], "")


class Gemma3(ChatStyle):
    """gemma-3-*-it: "<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n", the messages stripped, no
    system turn: a system message goes before the first user message, followed by a blank line. The template starts
    with <bos>, which this style leaves to the tokenizer (it adds it). The answer ends with <end_of_turn>, not the
    tokenizer's eos (<eos>)."""

    name = "gemma3"
    stop_strings = ("<end_of_turn>",)
    answer_end = "<end_of_turn>"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        users = [user.strip() for user in _users(turns, message)]
        if users and system:
            users[0] = f"{system}\n\n{users[0]}"
        return _join_turns("", [f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n" for user in users],
                           [f"{answer.strip()}<end_of_turn>" for _, answer in turns], "\n")


def _without_thoughts(answer: str) -> str:
    """An answer as the Gemma 4 template writes it: its "<|channel>...<channel|>" thoughts dropped, then stripped."""
    return "".join(part.partition("<|channel>")[0] for part in answer.split("<channel|>")).strip()


class Gemma4(ChatStyle):
    """gemma-4-E2B-it / -E4B-it (their template, "Google Gemma 4 Canonical Chat Template" of 2026-07-09, thinking off
    by default): "<|turn>{role}\n{text}<turn|>\n" turns with the roles system, user and model, the messages stripped;
    a system message is a system turn (none of its own). Answers lose their "<|channel>...<channel|>" thoughts, as the
    template drops them from every answer it renders. The template starts with <bos>, which this style leaves to the
    tokenizer (it adds it). The answer ends with <turn|>, not the tokenizer's eos (<eos>)."""

    name = "gemma4"
    stop_strings = ("<turn|>",)
    answer_end = "<turn|>"
    think = ""  # what the system turn starts with ("<|think|>\n": thinking, written with or without a system message)
    prompt_end = ""  # what the prompt for a new message's answer ends with after "<|turn>model\n"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        head = f"<|turn>system\n{self.think}{(system or '').strip()}<turn|>\n" if system or self.think else ""
        pieces = _join_turns(head, [f"<|turn>user\n{user.strip()}<turn|>\n<|turn>model\n"
                                    for user in _users(turns, message)],
                             [f"{_without_thoughts(answer)}<turn|>" for _, answer in turns], "\n")
        if message is not None:
            pieces[-1] += self.prompt_end
        return pieces


class Gemma4Think(Gemma4):
    """Gemma 4 with the template's `enable_thinking=True`: the system turn always written, starting with "<|think|>\n";
    the model then writes "<|channel>thought\n...<channel|>" before its answer. The E2B/E4B template and the larger
    models' (31B, 26B-A4B) render the same prompt with thinking on."""

    name = "gemma4-think"
    think = "<|think|>\n"


class Gemma4NoThink(Gemma4):
    """gemma-4-31B-it (its template, shared by the 26B-A4B, thinking off by default): Gemma4 whose prompt for an answer
    ends with an empty thought channel, "<|turn>model\n<|channel>thought\n<channel|>", so that the model answers at
    once. A finished conversation has none, as the template renders it (so conversation data trains without it);
    an instruction's training text is the prompt, channel included, then the answer."""

    name = "gemma4-nothink"
    prompt_end = "<|channel>thought\n<channel|>"


class Phi3(ChatStyle):
    """Phi-3-mini-4k-instruct: "<|user|>\n{text}<|end|>\n<|assistant|>\n", a "<|system|>" turn when a system message
    is given (none of its own), no BOS in the template. The answer ends with <|end|>, not the tokenizer's eos
    (<|endoftext|>)."""

    name = "phi3"
    stop_strings = ("<|end|>",)
    answer_end = "<|end|>"
    sep = "\n"  # after each tag and each <|end|>

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        n = self.sep
        return _join_turns(f"<|system|>{n}{system}<|end|>{n}" if system else "",
                           [f"<|user|>{n}{user}<|end|>{n}<|assistant|>{n}" for user in _users(turns, message)],
                           [f"{answer}<|end|>" for _, answer in turns], n)


class Phi4Mini(Phi3):
    """Phi-4-mini-instruct: Phi-3's tags without newlines, "<|user|>{text}<|end|><|assistant|>", a "<|system|>" turn
    when a system message is given, no BOS in the template. The answer ends with <|end|>, not the tokenizer's eos
    (<|endoftext|>)."""

    name = "phi4-mini"
    sep = ""


class MistralNemo(ChatStyle):
    """Mistral-Nemo-Instruct-2407 (Mistral's v3-tekken format): "[INST]{text}[/INST]" with no spaces and the text as
    is; the answer follows at once and ends with </s> (the tokenizer reads "</s>" in later turns as EOS). The
    template starts with <s>, which this style leaves to the tokenizer (it adds it). A system message goes before the
    last user message, followed by a blank line, as the template writes a prompt. (On a finished conversation the
    template drops it, its last message being an answer; this style keeps it before the last user message, where
    Mistral's own tokenizer, mistral-common, puts it.) No default system message."""

    name = "mistral-nemo"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        users = _users(turns, message)
        if users and system:
            users[-1] = f"{system}\n\n{users[-1]}"
        return _join_turns("", [f"[INST]{user}[/INST]" for user in users], [f"{answer}</s>" for _, answer in turns],
                           "")


# SmolLM3's "Custom Instructions" when there is no system message, in each reasoning mode
SMOLLM3_INSTRUCTIONS = {
    "/think": ("You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant "
               "involves thoroughly exploring questions through a systematic thinking process before providing the "
               "final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, "
               "summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop well-"
               "considered thinking process. Please structure your response into two main sections: Thought and "
               "Solution using the specified format: <think> Thought section </think> Solution section. In the "
               "Thought section, detail your reasoning process in steps. Each step should include detailed "
               "considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, "
               "verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In "
               "the Solution section, based on various attempts, explorations, and reflections from the Thought "
               "section, systematically present the final solution that you deem correct. The Solution section "
               "should be logical, accurate, and concise and detail necessary steps needed to reach the conclusion."),
    "/no_think": "You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
}


class SmolLM3(ChatStyle):
    """SmolLM3-3B: ChatML after a system block the template always writes, "## Metadata" (knowledge cutoff, today's
    date, "Reasoning Mode: /think" or "/no_think") then "## Custom Instructions": the system message, else SmolLM's
    default for the mode. The block has no <|im_end|> (the template writes one only with tools). Thinking is the
    default; a system message containing "/no_think" (or "/think") switches the mode, and the flags are taken out of
    it; one containing "/system_override" replaces the whole block. Without thinking, each answer starts with an empty
    think block "<think>\n\n</think>\n", which belongs to its prompt. The 3B's template dates the prompt with the
    current day (transformers' `strftime_now`): this style writes 08 July 2025 (SmolLM3's release), so a prompt does
    not change with the day. No BOS; the answer ends with <|im_end|>."""

    name = "smollm3"
    date = "08 July 2025"
    mode = "/think"  # the template's default (enable_thinking); "/no_think": SmolLM3NoThink
    stop_strings = ("<|im_end|>",)
    answer_end = "<|im_end|>"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        mode, instructions = self.mode, ""
        if system:
            mode = "/no_think" if "/no_think" in system else "/think" if "/think" in system else mode
            instructions = system.replace("/no_think", "").replace("/think", "").rstrip()
        if system and "/system_override" in system:
            head = instructions.replace("/system_override", "").rstrip() + "<|im_end|>\n"
        else:
            head = (f"## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: {self.date}\nReasoning Mode: {mode}"
                    f"\n\n## Custom Instructions\n\n{instructions or SMOLLM3_INSTRUCTIONS[mode]}\n\n")
        think = "" if mode == "/think" else "<think>\n\n</think>\n"
        return _join_turns("<|im_start|>system\n" + head,
                           [f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{think}"
                            for user in _users(turns, message)],
                           [answer.lstrip("\n") + "<|im_end|>" for _, answer in turns], "\n")


class SmolLM3NoThink(SmolLM3):
    """SmolLM3-3B with the template's `enable_thinking=False` ("Reasoning Mode: /no_think", the empty think block before
    each answer); a system message containing "/think" still switches thinking on."""

    name = "smollm3-nothink"
    mode = "/no_think"


class OLMo2(ChatStyle):
    """OLMo-2-*-Instruct (Tülu 3's format): "<|user|>\n{text}\n<|assistant|>\n", a "<|system|>\n{text}\n" turn when a
    system message is given (none of its own). The template starts with its bos_token, <|endoftext|>, which the OLMo 2
    tokenizer does not add itself: this style writes it. The answer ends with <|endoftext|> (the tokenizer's eos),
    followed by "\n" when another turn follows."""

    name = "olmo2"
    stop_strings = ("<|endoftext|>",)

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        return _join_turns("<|endoftext|>" + (f"<|system|>\n{system}\n" if system else ""),
                           [f"<|user|>\n{user}\n<|assistant|>\n" for user in _users(turns, message)],
                           [f"{answer}<|endoftext|>" for _, answer in turns], "\n")


_NO_FUNCTIONS = "You do not currently have access to any functions. <functions></functions>"


class OLMo3(ChatStyle):
    """Olmo-3-7B-Instruct: ChatML turns, "<|im_start|>{role}\n{text}<|im_end|>\n", the messages as they are, after a
    system turn the template always writes: a given system message, else "You are a helpful function-calling AI
    assistant." and that it has no functions (tools, which the template can list, are not supported here). Earlier
    answers end with <|im_end|>; the template ends a finished conversation's last answer with eos_token (<|endoftext|>,
    the OLMo 3 tokenizer's eos, which finetuning also appends after an instruction's answer). No BOS."""

    name = "olmo3"
    system = f"You are a helpful function-calling AI assistant. {_NO_FUNCTIONS}"
    stop_strings = ("<|im_end|>", "<|endoftext|>")
    system_suffix = ""  # what the template writes after a given system message
    prompt_end = ""  # what the prompt for a new message's answer ends with after "<|im_start|>assistant\n"

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        system = system + self.system_suffix if system else self.system
        last = len(turns) - 1 if message is None else None  # the answer the template ends with eos_token
        pieces = _join_turns(f"<|im_start|>system\n{system}<|im_end|>\n",
                             [f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                              for user in _users(turns, message)],
                             [answer + ("<|endoftext|>" if i == last else "<|im_end|>")
                              for i, (_, answer) in enumerate(turns)], "\n")
        if message is not None:
            pieces[-1] += self.prompt_end
        return pieces


class OLMo31(OLMo3):
    """Olmo-3.1-32B-Instruct: Olmo 3's template with Ai2's Olmo identity as the default system message (and the same
    no-functions line after it)."""

    name = "olmo3.1"
    system = ("You are Olmo, a helpful AI assistant built by Ai2. Your date cutoff is December 2024, and your model "
              f"weights are available at https://huggingface.co/allenai. {_NO_FUNCTIONS}")


class OLMo3Think(OLMo3):
    """Olmo-3-7B-Think (the Hub's template; Ollama's olmo3-think renderer writes the 3.1 identity instead): Olmo 3's
    turns and ends, a given system message followed by " You do not currently have access to any functions.
    <functions></functions>", else "You are OLMo, a helpful function-calling AI assistant built by Ai2. ..." with that
    line. The prompt for an answer opens the think block, "<|im_start|>assistant\n<think>"; the model writes its
    reasoning, "</think>" and the answer. A finished conversation has no "<think>" of its own, as the template writes
    each answer as it is (so conversation data trains without it); an instruction's training text is the prompt,
    "<think>" included, then the answer (no response_prefix: the template does not say how a reasoning closes)."""

    name = "olmo3-think"
    system = ("You are OLMo, a helpful function-calling AI assistant built by Ai2. Your date cutoff is November 2024, "
              f"and your model weights are available at https://huggingface.co/allenai. {_NO_FUNCTIONS}")
    system_suffix = f" {_NO_FUNCTIONS}"
    prompt_end = "<think>"


class OLMo3Think32B(OLMo3Think):
    """Olmo-3-32B-Think: Olmo-3-7B-Think's template with "You are a helpful AI assistant." (alone) as the default system
    message."""

    name = "olmo3-32b-think"
    system = "You are a helpful AI assistant."


def harmony_answer(text: str) -> Tuple[str, str]:
    """(reasoning, final text) of an answer in the harmony format: the final text follows the last
    "<|channel|>final<|message|>", the reasoning is that of the "<|channel|>analysis<|message|>" message before it
    (up to its "<|end|>"). An answer cut off in its reasoning has no final text; one without channels (plain answers
    in training data) is all final text."""
    final, analysis = "<|channel|>final<|message|>", "<|channel|>analysis<|message|>"
    if final in text:
        before, _, text = text.rpartition(final)
    elif analysis in text:
        before, text = text, ""
    else:
        return "", text
    _, found, reasoning = before.partition(analysis)
    return (reasoning.partition("<|end|>")[0] if found else ""), text


class GptOss(ChatStyle):
    """gpt-oss-20b / -120b (OpenAI's harmony format, as their chat template writes it): messages
    "<|start|>{role}<|message|>{text}<|end|>", the texts as they are, after a system message the template always
    writes (the model identity, "Knowledge cutoff: 2024-06", the current date, "Reasoning: medium", the valid
    channels). A system message becomes the developer message "# Instructions\\n\\n{text}\\n\\n". The prompt for an
    answer ends with "<|start|>assistant"; the model writes its reasoning as
    "<|channel|>analysis<|message|>...<|end|><|start|>assistant", then "<|channel|>final<|message|>{answer}" and
    <|return|>. Earlier answers keep only their final text (`harmony_answer`), ended by <|end|>; the final answer of a
    finished conversation keeps its reasoning and ends with <|return|>. Plain answers (training data) get the final
    channel (response_prefix). The template dates the prompt with the current day: this style writes 2025-08-05 (the
    release), so a prompt does not change with the day. No BOS."""

    name = "gpt-oss"
    date = "2025-08-05"
    reasoning = "medium"  # the template's default reasoning_effort
    response_prefix = "<|channel|>final<|message|>"
    answer_end = "<|return|>"
    # <|return|> ends the answer, <|call|> a tool call; <|end|> only ends a message (the reasoning), so it is no stop
    stop_strings = ("<|return|>", "<|call|>")

    def conversation_pieces(self, turns: Sequence[Tuple[str, str]], message: Optional[str] = None,
                            system: Optional[str] = None) -> list[str]:
        head = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                f"Knowledge cutoff: 2024-06\nCurrent date: {self.date}\n\nReasoning: {self.reasoning}\n\n"
                "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")
        if system:
            head += f"<|start|>developer<|message|># Instructions\n\n{system}\n\n<|end|>"
        last = len(turns) - 1 if message is None else None  # the answer the template writes whole, with <|return|>
        answers = []
        for i, (_, answer) in enumerate(turns):
            reasoning, text = harmony_answer(answer)
            final = f"{self.response_prefix}{text}"
            if i != last:
                answers.append(final + "<|end|>")
            elif reasoning:
                answers.append(f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant{final}<|return|>")
            else:
                answers.append(final + "<|return|>")
        return _join_turns(head, [f"<|start|>user<|message|>{user}<|end|><|start|>assistant"
                                  for user in _users(turns, message)], answers, "")


class GptOssLow(GptOss):
    """gpt-oss with the template's reasoning_effort="low": "Reasoning: low" in the system message."""

    name = "gpt-oss-low"
    reasoning = "low"


class GptOssHigh(GptOss):
    """gpt-oss with the template's reasoning_effort="high": "Reasoning: high" in the system message."""

    name = "gpt-oss-high"
    reasoning = "high"


class FalconInstruct(PromptStyle):
    """falcon-7b-instruct: TII publishes no prompt format; this style uses "User: ...\\nFalcon:" turns. The model
    seldom emits eos, so a new "\\nUser:" line also ends an answer."""

    name = "falcon-instruct"
    response_prefix = " "
    stop_strings = ("\nUser:",)

    def apply(self, instruction: str, input: str = "") -> str:
        return f"User: {_user_message(instruction, input)}\nFalcon:"


prompt_styles = {cls.name: cls for cls in (Alpaca, QA, ChatML, Llama2Chat, TinyLlamaChat, FalconInstruct, Llama31,
                                            Qwen25, Qwen3, Qwen3NoThink, Qwen3Instruct2507, Qwen35, Qwen35NoThink,
                                            Gemma3, Gemma4, Gemma4Think, Gemma4NoThink, Phi3, Phi4Mini, MistralNemo,
                                            SmolLM3, SmolLM3NoThink, OLMo2, OLMo3, OLMo31, OLMo3Think, OLMo3Think32B,
                                            GptOss, GptOssLow, GptOssHigh)}
# for script flags (jsonargparse shows the choices in --help)
PromptStyleName = Literal["alpaca", "qa", "chatml", "llama2-chat", "tinyllama-chat", "falcon-instruct", "llama3.1",
                          "qwen2.5", "qwen3", "qwen3-nothink", "qwen3-instruct-2507", "qwen3.5", "qwen3.5-nothink",
                          "gemma3", "gemma4", "gemma4-think", "gemma4-nothink", "phi3", "phi4-mini", "mistral-nemo",
                          "smollm3", "smollm3-nothink", "olmo2", "olmo3", "olmo3.1", "olmo3-think", "olmo3-32b-think",
                          "gpt-oss", "gpt-oss-low", "gpt-oss-high"]
assert list(get_args(PromptStyleName)) == list(prompt_styles)

# chat presets (lit_gpt/config.py names) -> the template they were trained with; every other model gets "alpaca"
_chat_models = [
    (r"Llama-2-.*-chat-hf", "llama2-chat"),
    (r"TinyLlama-.*-Chat-.*", "tinyllama-chat"),
    (r"SmolLM2-.*-Instruct", "chatml"),
    (r"falcon-.*-instruct", "falcon-instruct"),
    (r"Llama-3\.[123]-[0-9.]+B-Instruct", "llama3.1"),
    (r"Qwen2\.5-[0-9.]+B-Instruct", "qwen2.5"),
    (r"Qwen3-[0-9.]+B(-A[0-9.]+B)?", "qwen3"),  # hybrid thinking models; the base ones are "Qwen3-*B-Base"
    (r"Qwen3-[0-9.]+B(-A[0-9.]+B)?-Instruct-2507", "qwen3-instruct-2507"),
    # Qwen3-*-Thinking-2507: not mapped, their template (the prompt opens "<think>") was not found verbatim
    (r"Qwen3\.5-(0\.8|2)B", "qwen3.5-nothink"),  # their template thinks only when asked to
    (r"Qwen3\.5-[0-9.]+B(-A[0-9.]+B)?", "qwen3.5"),  # the base ones are "Qwen3.5-*B-Base"
    (r"gemma-3-[0-9]+[mb]-it", "gemma3"),
    (r"gemma-4-E[0-9]+B-it", "gemma4"),
    (r"gemma-4-[0-9]+B(-A[0-9]+B)?-it", "gemma4-nothink"),  # the 31B's and 26B-A4B's template
    (r"Phi-3-mini-4k-instruct", "phi3"),
    (r"Phi-4-mini-instruct", "phi4-mini"),
    (r"Mistral-Nemo-Instruct-2407", "mistral-nemo"),
    (r"SmolLM3-3B", "smollm3"),
    (r"OLMo-2-[0-9]{4}-[0-9]+B-Instruct", "olmo2"),
    (r"Olmo-3-7B-Instruct", "olmo3"),
    (r"Olmo-3\.1-32B-Instruct", "olmo3.1"),
    (r"Olmo-3-7B-Think", "olmo3-think"),
    (r"Olmo-3-32B-Think", "olmo3-32b-think"),  # Olmo-3.1-32B-Think's template is not known: not mapped
    (r"gpt-oss-[0-9]+b", "gpt-oss"),
]


def default_prompt_style(config: Any) -> PromptStyle:
    """The style a model was trained with when it is a chat/instruct preset, else "alpaca"."""
    for pattern, style in _chat_models:
        if re.fullmatch(pattern, config.name):
            return PromptStyle.from_name(style)
    return PromptStyle.from_name("alpaca")


def save_prompt_style(style: PromptStyle, directory: Union[str, Path]) -> None:
    atomic_write_text(Path(directory) / "prompt_style.json", json.dumps({"name": style.name}) + "\n")


def has_prompt_style(directory: Union[str, Path]) -> bool:
    return (Path(directory) / "prompt_style.json").is_file()


def load_prompt_style(directory: Union[str, Path]) -> PromptStyle:
    path = Path(directory) / "prompt_style.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    except FileNotFoundError:
        fail(f"No prompt_style.json in {str(directory)!r}")
    except (ValueError, KeyError, TypeError) as e:
        fail(f"{str(path)!r} is not a valid prompt style file ({type(e).__name__}: {e}); expected {{\"name\": ...}}")
    return PromptStyle.from_name(name)


def resolve_prompt_style(name: Optional[str], checkpoint_dir: Union[str, Path]) -> PromptStyle:
    """`name` if given, else the checkpoint's prompt_style.json, else the default for the checkpoint's model."""
    from lit_gpt.config import Config

    if name is not None:
        return PromptStyle.from_name(name)
    if has_prompt_style(checkpoint_dir):
        return load_prompt_style(checkpoint_dir)
    try:
        config = Config.from_checkpoint(checkpoint_dir)
    except (FileNotFoundError, ValueError) as e:
        fail(f"Cannot tell the model of {str(checkpoint_dir)!r} ({e}); pass --prompt_style explicitly")
    return default_prompt_style(config)
