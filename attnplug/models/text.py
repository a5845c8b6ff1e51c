"""The tiny word-level tokenizer, built offline from a vocabulary file (no hub, no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

PAD, UNK = "[PAD]", "[UNK]"


def build_vocab(words: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Word -> id map with ``[PAD]`` = 0 and ``[UNK]`` = 1 followed by ``words`` in order."""
    vocab = {PAD: 0, UNK: 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    return vocab


def make_tokenizer(vocab: dict[str, int], max_length: int):
    """A ``transformers.PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model.

    Lower-cases, splits on whitespace and punctuation, pads/truncates to ``max_length``; unknown words map to
    ``[UNK]``. Calling it with ``padding="max_length"`` gives ``input_ids`` of shape ``(B, max_length)``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab=dict(vocab), unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, model_max_length=max_length)
    fast.padding_side = "right"
    return fast


def load_vocab(path: str | Path) -> dict[str, int]:
    """Read a ``vocab.json`` (word -> id); raises ``ValueError`` naming the file when it is not such a map."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Tokenizer vocabulary {path} could not be read as JSON: {exc}.") from exc
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise ValueError(f"Tokenizer vocabulary {path} must be a JSON object mapping words to integer ids.")
    if vocab.get(PAD) != 0 or UNK not in vocab:
        raise ValueError(f"Tokenizer vocabulary {path} must contain {PAD!r} with id 0 and {UNK!r}.")
    return vocab


def encode(tokenizer, prompts: list[str], max_length: int):
    """Tokenize ``prompts`` to ``input_ids`` of shape ``(B, max_length)`` (int64)."""
    out = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return out.input_ids
