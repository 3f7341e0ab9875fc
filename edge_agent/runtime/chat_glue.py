"""The tokens a chat template puts between an assistant's answer and the next user message.

A chat's next turn sends the answer back followed by this glue (ChatML: `<|im_end|>`,
newline, `<|im_start|>user`, newline), then the new message. The scheduler feeds the glue
to a kept generator while it has nothing else to do, so the next turn's prefill starts
at the new message. A guess only: the prompt cache reuses it where the next prompt's tokens
match it, and nowhere else.
"""

from __future__ import annotations

import logging

from edge_agent.runtime.engine import ChatMessage, LoadedModel

log = logging.getLogger(__name__)

_ANSWER = "edge-glue-answer"
_QUESTION = "edge-glue-question"


def next_turn_glue(model: LoadedModel) -> list[int]:
    """The glue's tokens as they appear in a rendered chat; [] when the template does not
    show one (it fails, or reorders the messages)."""
    history = [ChatMessage("user", "x"), ChatMessage("assistant", _ANSWER)]
    try:
        text = model.chat_prompt([*history, ChatMessage("user", _QUESTION)])
    except Exception:  # a template's own error: no glue, the cache works without it
        log.warning("the chat template could not render a second turn; no glue is prefed")
        return []
    start, end = text.find(_ANSWER), text.find(_QUESTION)
    if start < 0 or end < start:
        return []
    glue = text[start + len(_ANSWER) : end]
    head = model.encode(_ANSWER)
    alone = model.encode(_ANSWER + glue)[len(head) :]
    # Only the tokens the glue keeps when the message follows it (its last one may merge).
    followed = model.encode(_ANSWER + glue + _QUESTION)[len(head) :]
    same = 0
    while same < min(len(alone), len(followed)) and alone[same] == followed[same]:
        same += 1
    return alone[:same]
