"""GPT-2 tokens (checked against an independent reference BPE), documents and padding."""

import re

import numpy as np
import pytest

from ladd.data.shakespeare import load_shakespeare, markdown_to_text, play_files, plays_directory
from ladd.data.tokenizers import (_GPT2_SAFE_CUT, GPT2_ASSET, GPT2_EOS_ID, BpeTokenizer, Gpt2Tokenizer,
                                  load_tokenizer, make_tokenizer, read_tiktoken_ranks)
from ladd.data.errors import DataError

# GPT-2's pre-tokenizer, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
# in the standard library's `re`: [^\W\d_] is \p{L} and \d is \p{N} for the scripts below
# (Latin, CJK, ASCII digits), which is all the reference is used on.
_PIECES = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def reference_bpe(text, ranks):
  """tiktoken's rule, written plainly: per piece, merge the adjacent pair whose union has
  the lowest rank until none is in the vocabulary."""
  ids = []
  for piece in _PIECES.findall(text):
    parts = [bytes([b]) for b in piece.encode("utf-8")]
    while len(parts) > 1:
      pairs = [(ranks.get(parts[i] + parts[i + 1], np.inf), i) for i in range(len(parts) - 1)]
      rank, i = min(pairs)
      if rank == np.inf:
        break
      parts[i:i + 2] = [parts[i] + parts[i + 1]]
    ids += [ranks[part] for part in parts]
  return ids


@pytest.fixture(scope="module")
def gpt2():
  return Gpt2Tokenizer()


@pytest.fixture(scope="module")
def ranks():
  return read_tiktoken_ranks(GPT2_ASSET)


def test_gpt2_known_ids(gpt2):
  assert gpt2.encode("Hello world").tolist() == [15496, 995]
  assert gpt2.vocab_size == 50257 and gpt2.eos_id == GPT2_EOS_ID == 50256
  assert gpt2.decode([GPT2_EOS_ID]) == "<|endoftext|>"
  # Written out in text it is ordinary tokens, never the separator.
  assert GPT2_EOS_ID not in gpt2.encode("a <|endoftext|> b").tolist()
  # Ids of tiktoken 0.14's "gpt2" encoding (encode_ordinary), recorded once.
  assert gpt2.encode(" Hello\n\n  world  ü 日本語 é\t\r\n").tolist() == [
      18435, 628, 220, 995, 220, 6184, 120, 10545, 245, 98, 17312, 105, 45739, 252, 38251,
      197, 201, 198]


@pytest.mark.parametrize("text", [
    " leading space", "  two leading spaces", "trailing spaces   ", "new\nlines\n\n\nand\n  indent",
    "It's they're we've I'm you'll he'd", "numbers 12345 and 3.14159", "naïve café über 日本語のテキスト",
    "tabs\tand\r\nwindows lines", "punctuation!?... (brackets) [x] {y} --dashes--", "MiXeD CaSe WORDS",
])
def test_gpt2_matches_reference_bpe(gpt2, ranks, text):
  assert gpt2.encode(text).tolist() == reference_bpe(text, ranks)
  assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_long_text_chunks_match_the_reference(gpt2, ranks):
  # Long texts are encoded in chunks cut at newlines; the ids must be those of the whole,
  # however finely the text is cut (cutting at every newline would differ here).
  play = markdown_to_text(play_files(plays_directory())["the-tempest"].read_text("utf-8"))
  play = play.replace("\n\n", "\n\n  ", 50)
  expected = reference_bpe(play, ranks)
  assert gpt2.encode(play).tolist() == expected
  pieces = _GPT2_SAFE_CUT.split(play)
  assert len(pieces) > 1000
  assert np.concatenate([gpt2.encode(p) for p in pieces]).tolist() == expected


def test_gpt2_round_trips_every_held_out_play(gpt2):
  eval_plays = ("hamlet", "the-tempest", "twelfth-night")
  _, plays = load_shakespeare(eval_plays)
  for play in plays:
    ids = gpt2.encode(play)
    assert ids.max() < GPT2_EOS_ID and gpt2.decode(ids) == play


def test_gpt2_saved_and_tokenizer_path(tmp_path, gpt2):
  gpt2.save(tmp_path / "tokenizer.json")
  assert load_tokenizer(tmp_path / "tokenizer.json").encode("Hello world").tolist() == [15496, 995]
  trained = BpeTokenizer.train("the cat sat on the mat\n" * 50, vocab_size=300)
  trained.save(tmp_path / "mine.json")
  loaded = make_tokenizer("bpe", str(tmp_path / "mine.json"), 999, training_text=None)
  assert loaded.encode("the cat sat").tolist() == trained.encode("the cat sat").tolist()
  with pytest.raises(DataError, match="cannot load a tokenizers JSON"):
    make_tokenizer("bpe", str(tmp_path / "missing.json"), 999, training_text=None)
  with pytest.raises(DataError, match="set data.tokenizer='bpe'"):
    make_tokenizer("gpt2", str(tmp_path / "mine.json"), 999, training_text=None)
