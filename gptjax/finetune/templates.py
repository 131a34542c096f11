"""Prompt templates: a record becomes text pieces, each marked as a target (trained on) or not.

alpaca (rasbt's ch07 / Stanford Alpaca): "Below is an instruction ... ### Instruction:\\n{instruction}[\\n\\n### Input:
\\n{input}]\\n\\n### Response:\\n" is the prompt, the output the target, then <|endoftext|> (a target, so the model
learns to stop). chat: "<|system|>\\n…\\n<|user|>\\n…\\n<|assistant|>\\n" role headers, each header one special token
(CHAT_TOKENS, added to the base's vocabulary for the run), every assistant turn a target ended by <|endoftext|>.
hf_chat: the base tokenizer's own chat template (gptjax.finetune.hf_chat) renders the same conversations
(`conversation`, `prompt_conversation`) as the family's instruct models were trained on, adding no token. It is a
template of its own rather than what `chat` becomes for an hf base: `chat` keeps one meaning (and one vocabulary)
whatever the base, and a run's tokens never change because its base happens to ship a template.
"""
from __future__ import annotations

from typing import NamedTuple

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.")
RESPONSE_MARKER = "\n\n### Response:\n"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")  # the chat template's role headers, one token each
EOT = object()  # stands for the tokenizer's <|endoftext|> id among the pieces


class Piece(NamedTuple):
    text: object  # a string, or EOT
    target: bool


def alpaca_prompt(record: dict) -> str:
    """The instruction (and input) in Alpaca's format, up to and including the response marker."""
    prompt = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    if record.get("input"):
        prompt += f"\n\n### Input:\n{record['input']}"
    return prompt + RESPONSE_MARKER


def chat_pieces(messages: list[dict], add_generation_header: bool = False) -> list[Piece]:
    pieces = []
    for message in messages:
        assistant = message["role"] == "assistant"
        pieces.append(Piece(f"<|{message['role']}|>\n", False))
        pieces.append(Piece(message["content"], assistant))
        pieces.append(Piece(EOT, assistant) if assistant else Piece("\n", False))
    if add_generation_header:
        pieces.append(Piece("<|assistant|>\n", False))
    return pieces


def alpaca_user_turn(record: dict) -> dict:
    """An Alpaca record's instruction (and input) as one user message."""
    text = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return {"role": "user", "content": text}


def conversation(record: dict, response: str | None = None) -> list[dict]:
    """A record as chat messages: its own, or an Alpaca record's user turn and `response` (default its output)."""
    if "messages" in record:
        return record["messages"]
    answer = record["output"] if response is None else response
    return [alpaca_user_turn(record), {"role": "assistant", "content": answer}]


def prompt_conversation(record: dict) -> list[dict]:
    """The messages before a record's last assistant turn (the one generated for held-out samples)."""
    if "messages" not in record:
        return [alpaca_user_turn(record)]
    last_assistant = max(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
    return record["messages"][:last_assistant]


def prompt_pieces(record: dict, template: str) -> list[Piece]:
    """The prompt of a record (everything before the response), for generation and preference pairs."""
    if "messages" in record or template == "chat":
        return chat_pieces(prompt_conversation(record), add_generation_header=True)
    return [Piece(alpaca_prompt(record), False)]


def record_pieces(record: dict, template: str, response: str | None = None) -> list[Piece]:
    """The whole training text of a record: prompt pieces, then the response (`response`, default its output) and
    <|endoftext|> as targets. Chat records train on every assistant turn."""
    if "messages" in record:
        return chat_pieces(record["messages"])
    answer = record["output"] if response is None else response
    return prompt_pieces(record, template) + [Piece(answer, True), Piece(EOT, True)]
