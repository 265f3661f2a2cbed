"""Where a reasoning model's thinking ends and its answer begins, from the generated tokens'
text. The harmony replies are written from OpenAI's harmony format specification (no gpt-oss
weights can be downloaded here): the analysis channel is the reasoning, the final channel the
answer."""

from __future__ import annotations

from sweeper import reasoning

# gpt-oss as llama.cpp writes it out token by token (special tokens included)
HARMONY = [
    "<|channel|>",
    "analysis",
    "<|message|>",
    "The",
    " user",
    " wants",
    " a",
    " list",
    ".",
    "<|end|>",
    "<|start|>",
    "assistant",
    "<|channel|>",
    "final",
    "<|message|>",
    "1",
    ".",
    " Apple",
    "<|return|>",
]


def test_harmony_reasoning_and_answer_are_split() -> None:
    s = reasoning.split(HARMONY)
    assert s.reasoning_tokens == 15  # the analysis message and every marker up to the answer
    assert s.answer_tokens == 4
    assert s.answered
    assert s.answer == "1. Apple"


def test_harmony_cut_off_inside_the_analysis_channel_has_no_answer() -> None:
    s = reasoning.split(HARMONY[:7])
    assert not s.answered
    assert s.reasoning_tokens == 7 and s.answer_tokens == 0
    assert s.answer == ""


def test_harmony_starting_with_start_assistant() -> None:
    s = reasoning.split(["<|start|>", "assistant", *HARMONY])
    assert s.reasoning_tokens == 17 and s.answer == "1. Apple"


def test_think_tags_a_marker_split_across_tokens() -> None:
    pieces = ["<th", "ink>", "Let", " me", " think", "</th", "ink>", "\n\n", "Paris", "."]
    s = reasoning.split(pieces)
    assert s.reasoning_tokens == 8  # the blank line after the end tag is not yet the answer
    assert s.answer_tokens == 2
    assert s.answer == "Paris."


def test_a_reply_that_does_not_reason_is_all_answer() -> None:
    s = reasoning.split(["\n", "Paris", " is", " the", " capital"])
    assert s.reasoning_tokens == 0 and s.answered
    assert s.answer == "\nParis is the capital"


def test_a_reply_cut_off_while_thinking() -> None:
    s = reasoning.split(["<think>", "Hmm", ",", " let"])
    assert not s.answered and s.reasoning_tokens == 4
