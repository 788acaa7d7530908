"""Conversations in calibration files, rendered the way the model reads them.

An instruction-tuned model sees conversations through its tokenizer's chat template (role markers,
turn separators, special tokens). Calibrating it on the bare turn texts would score blocks and fit
healing on a distribution it never receives in use, so a calibration file's OpenAI-style
conversations (``messages``: turns with ``role`` and string ``content``) are rendered with the
template when the tokenizer has one (:class:`ChatTemplate`); other conversations, and any the
template refuses (e.g. roles out of the order it requires), are read as their turns' texts
(:func:`miprun.data.text.read_text_file`).
"""

from __future__ import annotations

from typing import Any


class ChatTemplate:
    """Render conversations with ``tokenizer``'s chat template, counting what it rendered.

    Called with a list of turns, it returns the rendered text, or None where a turn is not a
    ``{"role": str, "content": str}`` object or the template raises (the caller then joins the
    turns' texts)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.rendered = 0
        self.refused = 0

    def __call__(self, turns: list[Any]) -> str | None:
        if not turns or not all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                                for t in turns):
            return None
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False)
        except (TemplateError, ValueError, TypeError, KeyError):  # the template's own refusals
            self.refused += 1
            return None
        self.rendered += 1
        return text

    def record(self) -> dict[str, int] | None:
        """What was rendered, for the report (None when no conversation was)."""
        if not self.rendered and not self.refused:
            return None
        return {"rendered": self.rendered, "not_rendered": self.refused}


def chat_template(tokenizer: Any) -> ChatTemplate | None:
    """A :class:`ChatTemplate` for ``tokenizer``, or None when it has no chat template."""
    return ChatTemplate(tokenizer) if getattr(tokenizer, "chat_template", None) else None
