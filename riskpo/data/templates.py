"""Prompt templates: how a row's question becomes what the rollout engine is given.

- `plain`: the row's text as is. The tiny character model sees "12+345=" and answers "357"
  then EOS; the math verifier grades the last number of the response (answer_format
  `final_number`). For the code task it sees "f(0)=3;f(1)=5;" and writes "def f(x):return ...".
- `chat`: chat messages (a text row becomes one user message), with an optional system prompt
  and an instruction appended to the last user message (e.g. "... within \\boxed{}."); the
  engine renders them with the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from riskpo.data.rows import Row, RowError
from riskpo.messages import Prompt

TEMPLATES = ("plain", "chat")  # data.template


def build_prompt(
    row: Row, template: str, system_prompt: str | None = None, instruction: str | None = None
) -> Prompt:
    """The engine prompt for one row under a template (see the module docstring)."""
    if template == "plain":
        if not isinstance(row.prompt, str):
            raise ValueError(
                f"data.template=plain needs text prompts, but a {row.data_source} row holds chat "
                "messages -> use data.template=chat"
            )
        if system_prompt or instruction:
            raise ValueError("data.system_prompt/instruction apply to data.template=chat only")
        return Prompt(text=row.prompt, images=list(row.images) or None)
    if template == "chat":
        return Prompt(messages=chat_messages(row, system_prompt, instruction),
                      images=list(row.images) or None)
    raise ValueError(f"data.template={template!r}: expected one of {TEMPLATES}")


def chat_messages(
    row: Row, system_prompt: str | None = None, instruction: str | None = None
) -> list[dict[str, str]]:
    """The row as chat messages, with the system prompt first and the instruction appended."""
    if isinstance(row.prompt, str):
        messages = [{"role": "user", "content": row.prompt}]
    else:
        messages = [dict(message) for message in row.prompt]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if instruction:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = f"{messages[last_user]['content']}\n{instruction}"
    return messages


def check_prompt_lengths(
    rows: Sequence[Row],
    prompt_length: Callable[[Prompt, int], int],
    template: str,
    max_prompt_length: int,
    origin: str,
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> None:
    """Raises RowError naming the first row whose rendered prompt is longer than
    max_prompt_length tokens (its file and row when it came from a file, else `origin` and its
    position), and that length. prompt_length(prompt, number) counts a prompt's tokens as the
    engines render it (riskpo.models.loading.prompt_length_counter: with a vision-language
    model's processor it counts the image tokens each image expands to)."""
    for number, row in enumerate(rows, start=1):
        prompt = build_prompt(row, template, system_prompt, instruction)
        length = prompt_length(prompt, number)
        if length > max_prompt_length:
            raise RowError(row.origin or origin, row.row_number or number, "prompt",
                           f"renders to {length} tokens{_image_note(row)}, more than "
                           f"data.max_prompt_length="
                           f"{max_prompt_length} -> raise data.max_prompt_length or drop the row")


def _image_note(row: Row) -> str:
    return f" (image tokens of its {len(row.images)} image(s) included)" if row.images else ""
