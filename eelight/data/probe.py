"""The synthetic probe: images of coloured shapes and rendered text with captions and
questions, in task families of increasing visual difficulty (`eelight.data.families`:
attribute, small, count, relation, compare, reading, document), each with its own
held-out split and chance level. Captions feed the align stage; conversations of
questions feed the instruct stage. The vocabulary is a few hundred words, so a tiny
model on a CPU can learn it. Fully determined by the seed.

The `attribute` family is the original probe: `count` copies (1-4) of one shape in one
colour in one quadrant, asked its shape, colour, position and count (4 answers each).

Each question is asked in one of three forms (`FORMS`), the formats `eelight eval`
asks the benchmarks in (`eelight.data.prompts`, as LLaVA-1.5's training mixture does):
plain, short answer (TextVQA/DocVQA) and multiple choice with the options in a
random order (MMBench/SEED-Bench). So a probe model can be scored through every
benchmark's path (`data_pipelines/probe_benchmarks.py`).

A multiple-choice question is answered with the option's *text*, which the rule-based
extraction maps to its letter (VLMEvalKit's `can_infer_text` step). Trained to answer
the letter, the demo's 4-layer model stayed at chance on it (25.4% of rows right after
700 instruct steps, 0% under CircularEval, while 98.8% right in plain form): pointing from
an option's text back to its letter is a skill of its own that this scale does not learn,
and the probe measures what the model sees, not that skill.
"""

from __future__ import annotations

import json
import random

# The scene primitives live in `scenes` (families draw with them); named here too, where
# callers have always found them.
from eelight.data.scenes import (  # noqa: F401
    ANSWERS,
    CHANCE,
    COLOURS,
    FORMS,
    NUMBERS,
    PLURAL,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    VERSION,
    ProbeItem,
    draw,
    probe_item,
    shape,
)


def corpus_words() -> list[str]:
    """Every word a caption, question or answer can use (for the word-level tokenizer)."""
    from eelight.data.families import family_words
    from eelight.data.prompts import words as prompt_words

    words = set(SHAPES) | set(PLURAL.values()) | set(COLOURS) | set(NUMBERS) | {"at", "the"} | set(prompt_words())
    for text in list(QUESTIONS.values()) + list(POSITIONS):
        words |= set(text.split())
    return sorted(words | set(family_words()))


def eval_shards(root: str, families: list[str] | tuple[str, ...] | None = None) -> str:
    """The held-out shards of the families (one split each), as one brace pattern."""
    from eelight.data.families import FAMILIES

    names = list(families or FAMILIES)
    return f"{root}/eval-{{{','.join(names)}}}-000000.tar" if len(names) > 1 else f"{root}/eval-{names[0]}-000000.tar"


def build_probe(out_dir: str, n_train: int, n_eval: int, seed: int = 0, image_size: int = 64,
                shard_size: int = 1000, families: list[str] | tuple[str, ...] | None = None) -> dict:
    """Train shards (the families in turn) and one held-out split per family (`n_eval` scenes
    each, `eval-<family>-000000.tar`), the word-level tokenizer under `out_dir/tokenizer`, and
    the manifest. Each sample has a caption, a conversation and its questions' answers."""
    from dataclasses import asdict
    from pathlib import Path

    from eelight.data.families import FAMILIES, conversation, scene
    from eelight.data.shards import Sample, write_shards
    from eelight.data.tokenizer import build_word_tokenizer

    names = list(families or FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown probe families {unknown}; choose from {list(FAMILIES)}")

    def samples(split: str, fams: list[str], n: int, split_seed: int):
        for i in range(n):
            family = fams[i % len(fams)]
            s = scene(family, i // len(fams), split_seed, image_size)
            turns = conversation(s, random.Random(f"turns:{split_seed}:{i}"))
            yield Sample(key=f"{split}{i:07d}", image=s.image, caption=s.caption, conversations=turns,
                         meta={"probe": {"family": family, "questions": [asdict(q) for q in s.questions]}})

    out = Path(out_dir)
    splits = {"train": write_shards(samples("train", names, n_train, seed), out, "train", max_count=shard_size)}
    for family in names:  # one shard each: n_eval must fit in shard_size
        splits[f"eval-{family}"] = write_shards(samples(f"eval-{family}", [family], n_eval, seed + 7919), out,
                                                f"eval-{family}", max_count=max(shard_size, n_eval))
    build_word_tokenizer(corpus_words(), out / "tokenizer")
    (out / "probe.json").write_text(json.dumps({"version": VERSION, "seed": seed, "image_size": image_size,
                                                "families": names}))
    return splits


def probe_version(out_dir: str) -> int | None:
    """The generator version a probe folder was written with (None: none or older)."""
    from pathlib import Path

    stamp = Path(out_dir) / "probe.json"
    return json.loads(stamp.read_text()).get("version") if stamp.exists() else None
