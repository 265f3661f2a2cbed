"""Reasoning models think before they answer: where the thinking ends and the answer begins,
found in the generated tokens' text.

Two formats are recognized, as the tokens arrive (each token's text, special tokens written
out):
- ``<think> ... </think>`` (DeepSeek-R1, Qwen3 and the like): the answer begins after the end
  tag;
- OpenAI's harmony format (gpt-oss): ``<|channel|>analysis<|message|> ... <|end|>`` is the
  reasoning, ``<|start|>assistant<|channel|>final<|message|> ...`` the answer (also when the
  output starts with ``<|channel|>`` without ``<|start|>assistant``).

A reply that starts with neither is all answer. Every token before the first answer token is a
reasoning token (the tags included: they are the thinking's cost too). A reply whose cap ended
it before any answer token has no answer.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK = ("<think>", "</think>")
HARMONY_REASONING = "<|channel|>analysis"
HARMONY_ANSWER = "<|channel|>final<|message|>"


_STARTS = (THINK[0], "<|channel|>", "<|start|>")
_ENDS = (THINK[1], HARMONY_ANSWER)
#: harmony's end-of-message markers, left out of the answer's text
_HARMONY_STOPS = ("<|return|>", "<|end|>", "<|call|>")


@dataclass
class Split:
    """Follows one generation token by token: ``add`` each token's text in order."""

    #: None while the reply's first characters could still be a marker
    reasoning: bool | None = None
    #: index of the first answer token (None: none yet)
    answer_at: int | None = None
    text: str = ""
    tokens: int = 0
    _first: int | None = None  # the first token with text
    _answer_from: int = 0  # where the answer's text begins

    def add(self, piece: str) -> None:
        index = self.tokens
        self.tokens += 1
        self.text += piece
        if self._first is None and self.text.strip():
            self._first = index
        if self.answer_at is not None or self._first is None:
            return
        if self.reasoning is None:
            head = self.text.lstrip()
            if any(head.startswith(m) for m in _STARTS):
                self.reasoning = True
            elif any(m.startswith(head) for m in _STARTS):
                return  # a marker may still be arriving
            else:
                self.reasoning = False
                self.answer_at, self._answer_from = self._first, 0
                return
        ends = [(at, m) for m in _ENDS if (at := self.text.find(m)) >= 0]
        if ends:
            at, marker = min(ends)
            cut = at + len(marker)
            if self.text[cut:].strip():  # this token reaches past the marker into the answer
                self.answer_at, self._answer_from = index, cut

    @property
    def answered(self) -> bool:
        """The answer began (before the cap ended the reply); a reply that did not reason has
        nothing to wait for."""
        return self.answer_at is not None or self.reasoning is not True

    @property
    def reasoning_tokens(self) -> int:
        if self.reasoning is not True:
            return 0
        return self.tokens if self.answer_at is None else self.answer_at

    @property
    def answer_tokens(self) -> int:
        return self.tokens - self.reasoning_tokens

    @property
    def answer(self) -> str:
        """The answer's text, the reasoning and its markers left out."""
        if self.reasoning is not True:
            return self.text
        if self.answer_at is None:
            return ""
        text = self.text[self._answer_from :]
        for stop in _HARMONY_STOPS:
            text = text.split(stop, 1)[0]
        return text.strip()


def split(pieces: list[str]) -> Split:
    """A whole reply, token by token."""
    s = Split()
    for piece in pieces:
        s.add(piece)
    return s
