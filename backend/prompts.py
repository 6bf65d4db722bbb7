"""Prompt formats for a base code model: the tech-assistant dialogue preamble, its rendering and its shorter forms."""
from __future__ import annotations

import re
from typing import Iterator

DIALOGUE_STOPS = ("\nHuman:", "\n-----")

DEFAULT_PREAMBLE = """The conversations below are between a programmer and a careful, friendly coding assistant.
The assistant answers questions about code, writes small correct programs, explains errors and
admits when it does not know something. It keeps answers short and puts code in fenced blocks.
-----
Human: How do I reverse a list in Python without changing the original?
Assistant: Slicing with a step of -1 makes a reversed copy:

```python
items = [1, 2, 3]
backwards = items[::-1]   # [3, 2, 1]; items is unchanged
```

`reversed(items)` gives an iterator instead, if you only need to loop over it once.
-----
Human: Write a function that checks whether a string is a palindrome, ignoring case and spaces.
Assistant: Normalise the string first, then compare it with its reverse:

```python
def is_palindrome(text: str) -> bool:
    letters = [c.lower() for c in text if not c.isspace()]
    return letters == letters[::-1]
```

For example `is_palindrome("Never odd or even")` returns `True`.
-----
Human: What does `KeyError: 'name'` mean?
Assistant: A dictionary was asked for the key `'name'`, and it has no such key. Check the spelling, or
use `data.get("name")`, which returns `None` (or a default you pass) instead of raising.
-----
Human: Thanks! One more: how can I read a file line by line?
Assistant: Open it in a `with` block and iterate over the file object; each line keeps its newline:

```python
with open("notes.txt", encoding="utf-8") as fh:
    for line in fh:
        print(line.rstrip("\\n"))
```
-----
"""


def render_dialogue(messages: list[dict], preamble: str | None = None) -> str:
    """OpenAI-style messages → preamble + Human/Assistant turns, ending with 'Assistant:' to continue."""
    preamble = DEFAULT_PREAMBLE if preamble is None else preamble
    system = [m["content"] for m in messages if m.get("role") == "system"]
    parts = [preamble.rstrip("\n") + "\n"] if preamble.strip() else []
    if system:
        parts.append("\n".join(system).strip() + "\n-----\n")
    for message in messages:
        role, content = message.get("role"), str(message.get("content", "")).strip()
        if role == "user":
            parts.append(f"Human: {content}\n")
        elif role == "assistant":
            parts.append(f"Assistant: {content}\n")
    parts.append("Assistant:")
    return "".join(parts)


def preamble_forms(preamble: str | None = None) -> list[str]:
    """The preamble, then with its few-shot turns given up one by one (the last first), down to its introduction.

    Turns are the blocks between `-----` lines; a preamble without them has one form.
    """
    preamble = DEFAULT_PREAMBLE if preamble is None else preamble
    blocks = re.split(r"(?m)^-----\n", preamble)
    if len(blocks) < 2:
        return [preamble]
    tail = blocks.pop() if not blocks[-1].strip() else ""
    forms = ["".join(b + "-----\n" for b in blocks[:n]) + (tail if n == len(blocks) else "")
             for n in range(len(blocks), 0, -1)]
    return forms


def dialogue_forms(messages: list[dict], preamble: str | None = None) -> Iterator[str]:
    """render_dialogue's prompt, then shorter ones: the preamble's few-shot turns go first, then the oldest
    dialogue turns; the system message and the last turn always stay."""
    forms = preamble_forms(preamble)
    for form in forms:
        yield render_dialogue(messages, form)
    turns = [i for i, m in enumerate(messages) if m.get("role") in ("user", "assistant")]
    for n in range(1, len(turns)):
        dropped = set(turns[:n])
        yield render_dialogue([m for i, m in enumerate(messages) if i not in dropped], forms[-1])
