"""What the ingress sends a model's replica, and the conversation key the router places it by."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from app.engine.config import GenerationConfig
from app.engine.tokenizer import Message

# A completion prompt's first characters stand for its conversation (a chat's opening messages do)
OPENING_CHARS = 2048


@dataclass
class ReplicaRequest:
    """What the ingress sends a replica: the engine's arguments and the conversation they belong to."""

    gen: GenerationConfig
    prompt: str | None = None
    messages: list[Message] | None = None
    conversation: str = ""


def conversation_key(prompt: str | None, messages: list[Message] | None) -> str:
    """The same for every turn of one conversation: a hash of its opening (system prompt and first
    user message), or of a completion prompt's first characters."""
    if messages is not None:
        opening = []
        for message in messages:
            opening.append(message)
            if message.get("role") == "user":
                break
        text = json.dumps(opening, sort_keys=True, default=str)
    else:
        text = (prompt or "")[:OPENING_CHARS]
    return hashlib.sha256(text.encode()).hexdigest()[:32]
