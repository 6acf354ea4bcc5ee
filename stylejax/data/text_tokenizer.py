"""A small CLIP-like byte-level BPE tokenizer, trained on captions with HF `tokenizers`.

Lowercased, whitespace-collapsed text is split GPT-2/CLIP style and encoded over bytes, so any
string (unseen words, emoji, accents) encodes without an unknown token. Every sequence is
`<|startoftext|> ... <|endoftext|>` padded with `<|pad|>` to a fixed `max_len`.

Special ids are fixed: <|startoftext|> = 0, <|endoftext|> = 1, <|pad|> = 2. The EOS id is
deliberately not 2: HF CLIP treats `eos_token_id == 2` as a legacy config and pools at the
argmax id instead of the first EOS (see `stylejax.models.clip.eos_positions`).
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2


class TextTokenizer:
  """Wraps a trained `tokenizers.Tokenizer`; fixed-length batch encoding as numpy int32."""

  def __init__(self, tokenizer: Tokenizer):
    self.tok = tokenizer
    self.bos_id, self.eos_id, self.pad_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
    if None in (self.bos_id, self.eos_id, self.pad_id):
      raise ValueError(f"tokenizer lacks one of the special tokens {SPECIAL_TOKENS}.")
    padding = tokenizer.padding
    if not padding or not padding.get("length"):
      raise ValueError("tokenizer has no fixed padding length; build it with train_bpe.")
    self.max_len: int = padding["length"]

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """list of B strings -> (ids [B, max_len] int32, attention mask [B, max_len] int32, 1 = token).

    Overlong texts are truncated but keep their final <|endoftext|>."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of strings; wrap a single prompt in a list.")
    encs = self.tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encs], np.int32).reshape(len(encs), self.max_len)
    mask = np.asarray([e.attention_mask for e in encs], np.int32).reshape(len(encs), self.max_len)
    return ids, mask

  def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
    """ids [B, L] -> B strings without special tokens (lowercased, whitespace collapsed)."""
    return [s.strip() for s in self.tok.decode_batch([list(map(int, row)) for row in np.asarray(ids)],
                                                      skip_special_tokens=True)]

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.tok.save(path)


def _empty_tokenizer() -> Tokenizer:
  tok = Tokenizer(models.BPE())  # no unk token: the byte alphabet covers every input
  # CLIP's text cleaning: lowercase, collapse runs of whitespace, strip the ends.
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase(),
                                         normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  return tok


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | None = None, max_len: int = 32,
              min_frequency: int = 2) -> TextTokenizer:
  """Trains a byte-level BPE on `texts`; saves `tokenizer.json` at `path` (a file path) if given.

  `vocab_size` counts the 256 byte symbols and 3 special tokens, so it must be >= 259.
  `max_len` includes <|startoftext|> and <|endoftext|>."""
  base = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
  if vocab_size < base:
    raise ValueError(f"vocab_size {vocab_size} is below the {base} byte and special tokens; use >= {base}.")
  if max_len < 3:
    raise ValueError(f"max_len {max_len} leaves no room for text between the two special tokens; use >= 3.")
  tok = _empty_tokenizer()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer=trainer)
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A {EOS}", special_tokens=[(t, tok.token_to_id(t)) for t in (BOS, EOS)])
  tok.enable_truncation(max_length=max_len)
  tok.enable_padding(length=max_len, pad_id=tok.token_to_id(PAD), pad_token=PAD)
  out = TextTokenizer(tok)
  if path:
    out.save(path)
  return out


def load_tokenizer(path: str) -> TextTokenizer:
  """Loads a `tokenizer.json` written by `train_bpe` (a directory holding one also works)."""
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no tokenizer at {path}; build one with stylejax.data.text_tokenizer.train_bpe.")
  return TextTokenizer(Tokenizer.from_file(path))
