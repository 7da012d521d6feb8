"""The question formats of the benchmarks, as LLaVA-1.5 and lmms-eval ask them.

One place for them, because the synthetic probe trains on the same formats that
`eelight eval` asks (so a probe model can be scored through every benchmark's path):

- multiple choice (MMBench, SEED-Bench generation protocol):
  `[hint\\n]question\\nA. ...\\nB. ...\\nAnswer with the option's letter from the given choices directly.`
- short answer (TextVQA, DocVQA): `question\\nAnswer the question using a single word or phrase.`
  TextVQA with OCR tokens (LLaVA-1.5): `question\\nReference OCR token: a, b\\n` + the same line.
"""

from __future__ import annotations

LETTERS = ("A", "B", "C", "D")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."


def multiple_choice(question: str, options: dict[str, str], hint: str | None = None) -> str:
    """options: letter -> option text, in the order they are shown."""
    lines = ([hint] if hint else []) + [question] + [f"{k}. {v}" for k, v in options.items()]
    return "\n".join(lines + [MC_INSTRUCTION])


def short_answer(question: str, ocr_tokens: list[str] | None = None) -> str:
    ocr = f"Reference OCR token: {', '.join(ocr_tokens)}\n" if ocr_tokens else ""
    return f"{question}\n{ocr}{SHORT_INSTRUCTION}"


def words() -> list[str]:
    """Every word the formats add (for the probe's word-level tokenizer)."""
    text = " ".join([MC_INSTRUCTION, SHORT_INSTRUCTION, *(f"{k}." for k in LETTERS), *LETTERS])
    return sorted(set(text.split()))
