"""The messages a training step passes between the driver and the worker groups: prompts and
sampling parameters going to the rollout engines, completions coming back, the status vocabulary
of the verifiers' results and the exact text of a numeric answer (the requests themselves are
made by each row's task: riskpo.data.registry.verification_request).

Both sides import this module (the workers never import the driver, and the driver never
imports a worker): it holds plain dataclasses and functions, no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from riskpo.options import require

MAX_EXPONENT = 400  # number_text: a number beyond 10^400 is not spelled out digit by digit


# --------------------------------------------------------------------------- rollout


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings (kept out of the text)
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to EOS
    seed: int | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first field out of range."""
        checks = [
            ("n", self.n >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0.0, "must be >= 0 (0 means greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 disables)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} {rule}")


@dataclass
class SamplingConfig:
    """How the driver asks the engines to sample (the sampling half of `rollout.*`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 8
    stop: list[str] = field(default_factory=list)
    eval_temperature: float | None = None  # null: same as temperature

    def check(self, key: str) -> None:
        require(self.temperature >= 0.0, f"{key}.temperature", "must be >= 0")
        require(self.eval_temperature is None or self.eval_temperature >= 0.0,
                f"{key}.eval_temperature", "must be >= 0 or null")
        require(0.0 < self.top_p <= 1.0, f"{key}.top_p", f"{self.top_p} outside (0, 1]")
        require(self.top_k >= 0, f"{key}.top_k", "must be >= 0 (0 disables)")
        require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
        require(all(self.stop), f"{key}.stop", "contains an empty stop string")

    def params(self, n: int, seed: int | None, *, evaluation: bool = False) -> SamplingParams:
        """The engines' SamplingParams for n samples per prompt (evaluation: eval_temperature)."""
        temperature = self.temperature
        if evaluation and self.eval_temperature is not None:
            temperature = self.eval_temperature
        return SamplingParams(n=n, temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, stop=list(self.stop), seed=seed)


@dataclass
class Prompt:
    """One prompt: exactly one of token_ids, text or messages (rendered with the chat template).

    images: encoded images (PNG, JPEG, ...) of a multimodal prompt, one per "<image>"
    placeholder (riskpo.data.rows.IMAGE_PLACEHOLDER) in its text or messages, in order; the
    engines render such a prompt with the model's processor (riskpo/models/vlm.py), which puts the
    model's image tokens where the placeholders are. Encoded bytes keep the message small and
    free of tensors."""

    token_ids: list[int] | None = None
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    images: list[bytes] | None = None


@dataclass
class Completion:
    """One sampled response of one prompt.

    token_ids are exactly the sampled tokens, up to and including the one that ended the
    response (EOS, a stop token id, or the token that completed a stop string), so the learner
    trains on what was sampled. text is their decoding without special tokens and cut before
    a matched stop string.

    logprobs[i] is log p(token_ids[i]) under the distribution the token was drawn from: the
    model's softmax after temperature scaling and top-k/top-p filtering (the "processed"
    distribution). At temperature 1, top_p 1, top_k 0 this equals the raw model log-prob the
    learner recomputes; for greedy decoding (temperature 0) it is the raw model log-prob.

    weight_version is the learner's number for the weights that sampled it (the updates they
    had), stamped by the rollout actor; None before the first weight sync.
    """

    token_ids: list[int]  # response tokens only
    logprobs: list[float]  # log-prob of each response token under the sampling policy
    finish_reason: Literal["stop", "length"]
    text: str  # decoded response
    prompt_token_ids: list[int] = field(default_factory=list)
    weight_version: int | None = None


class NonFiniteSampling(RuntimeError):
    """An engine met sampling probabilities that are not finite (inf/nan logits): the weights
    that sampled are broken. Raised by the engines where they sample; weight_version is the
    learner's number for those weights (stamped by the rollout actor like a Completion's; None:
    the weights at model_path). Pickles with it, so it survives Ray's wrapping (the driver finds
    it as RayTaskError.cause)."""

    def __init__(self, message: str, weight_version: int | None = None) -> None:
        super().__init__(message)
        self.weight_version = weight_version


def render_prompt(prompt: Prompt, tokenizer: Any, index: int = 0) -> list[int]:
    """Token ids of one prompt: given ids as they are, text through the tokenizer (with its
    special tokens, as vLLM does), messages through the chat template with a generation
    prompt. `index` only names the prompt in errors."""
    given = [
        name for name in ("token_ids", "text", "messages") if getattr(prompt, name) is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"prompt {index}: set exactly one of token_ids, text, messages (got {given or 'none'})"
        )
    if prompt.images:
        raise ValueError(f"prompt {index} has images: a text tokenizer cannot render it (the "
                         "model's processor does: riskpo.models.vlm.render_image_prompt)")
    if prompt.token_ids is not None:
        token_ids = list(prompt.token_ids)
    elif prompt.text is not None:
        token_ids = tokenizer(prompt.text)["input_ids"]
    else:
        rendered = tokenizer.apply_chat_template(
            prompt.messages, add_generation_prompt=True, tokenize=False
        )
        token_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if not token_ids:
        raise ValueError(f"prompt {index}: renders to no tokens")
    return token_ids



# --------------------------------------------------------------------------- verification

# Model failures: the trainer scores them (reward 0 unless the status says otherwise).
OK = "ok"
WRONG_ANSWER = "wrong_answer"
RUNTIME_ERROR = "runtime_error"
TIMEOUT = "timeout"
MEMORY = "memory"
OUTPUT_LIMIT = "output_limit"
CRASH = "crash"
COMPILE_ERROR = "compile_error"
NO_ANSWER = "no_answer"
INVALID_ANSWER = "invalid_answer"
# Not the model's fault: the trainer should mask these rows instead of scoring them.
BAD_INPUT = "bad_input"
INFRA_ERROR = "infra_error"

MODEL_STATUSES = frozenset(
    {OK, WRONG_ANSWER, RUNTIME_ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, CRASH, COMPILE_ERROR,
     NO_ANSWER, INVALID_ANSWER}
)
MASKED_STATUSES = frozenset({BAD_INPUT, INFRA_ERROR})

def is_masked(result: dict[str, Any]) -> bool:
    """True when a result reflects an infrastructure or input failure, not the model's answer."""
    return result.get("status") in MASKED_STATUSES


def number_text(value: Any) -> str:
    """A number's exact decimal text, never in exponent notation (a verifier reads "1e-05" as
    e - 5, LaTeX as e minus 5): an int as it is; a Decimal (how the row readers keep a JSON
    number's own text, or a parquet float's) digit for digit; a binary float by its shortest
    round-trip repr. Beyond 10^MAX_EXPONENT it is written m\\times10^{e}. The row format's
    numeric ground truths and the math verifier read numbers through it."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    number = Decimal(repr(value)) if isinstance(value, float) else value
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if abs(number.adjusted()) > MAX_EXPONENT:  # not spelled out digit by digit
        sign, digits, exponent = number.as_tuple()
        mantissa = Decimal((sign, digits, -(len(digits) - 1)))
        return f"{format(mantissa, 'f')}\\times10^{{{exponent + len(digits) - 1}}}"
    return format(number, "f")
