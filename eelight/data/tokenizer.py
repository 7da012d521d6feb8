"""A word-level tokenizer for the probe's tiny from-scratch runs, saved as a genuine
Hugging Face tokenizer folder (loaded back with `AutoTokenizer.from_pretrained`)."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
TEMPLATE_WORDS = ["USER:", "ASSISTANT:"]


def build_word_tokenizer(words: list[str], out_dir: str | Path):
    """Train-free word-level tokenizer over `words` (+ specials, template words); saved to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Words split at whitespace, punctuation isolated ("A." -> "A", "."), as subword tokenizers
    # do: an option's letter in a question and the letter answered are one token.
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    pieces = {piece for w in words for piece, _ in split.pre_tokenize_str(w)} - set(TEMPLATE_WORDS)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + TEMPLATE_WORDS + sorted(pieces))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = split
    core.add_tokens(TEMPLATE_WORDS)  # matched whole, before the split ("USER:" stays one token)
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.save_pretrained(out_dir)
    return tok


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").exists():
        raise FileNotFoundError(
            f"no tokenizer at {path} (tokenizer_config.json missing); build the probe with "
            "`python data_pipelines/synthetic_probe.py` or point data.tokenizer at a HF folder"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exn:  # noqa: BLE001 - a broken tokenizer.json / config raises many kinds
        from eelight.errors import UserError, one_line

        raise UserError(f"the tokenizer at {path} cannot be loaded ({type(exn).__name__}: {one_line(exn)[:160]}): "
                        "a file in it is broken or not a Hugging Face tokenizer's; re-save it with "
                        "save_pretrained or rebuild the probe") from exn
