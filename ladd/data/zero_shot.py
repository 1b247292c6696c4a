"""Another corpus as the held-out split of a trained checkpoint (`ladd.evaluate --data=PATH`),
read with the checkpoint's own tokenizer, as MDLM's users evaluate on PTB / WikiText.

Text the tokenizer cannot represent is counted and reported, never dropped: a character
tokenizer maps unseen characters to its <unk> id, which stays in the sequences and is
scored like any other id; `unrepresentable_characters` counts the characters that do not
come back when the ids are decoded.
"""

import dataclasses

import grain
import numpy as np
from etils import epath

from ladd import files
from ladd.data.dataset import Dataset
from ladd.data.errors import DataError
from ladd.data.prepare import MANIFEST, read_manifest
from ladd.data.pretokenized import TokenRecords
from ladd.data.streams import TokenWindows
from ladd.data.text import chars_per_token, document_stream, read_text_path, separated_documents


def unrepresentable_characters(text: str, decoded: str) -> int:
  """Characters of `text` that decoding its ids does not give back (equal lengths: char
  tokenizers decode <unk> to one character; otherwise every mismatch counts)."""
  if len(text) != len(decoded):
    return sum(a != b for a, b in zip(text, decoded)) + abs(len(text) - len(decoded))
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  return int(np.sum(codes != np.frombuffer(decoded.encode("utf-32-le"), np.uint32)))


def _prepared(dataset: Dataset, path: str) -> tuple[Dataset, dict]:
  manifest = read_manifest(path)
  theirs, ours = manifest["tokenizer"]["kind"], dataset.tokenizer.kind
  if theirs != ours or manifest["vocab_size"] > dataset.vocab_size or manifest["seq_len"] != dataset.seq_len:
    raise DataError(f"{path} holds {theirs!r} tokens (vocab {manifest['vocab_size']}, seq_len"
                    f" {manifest['seq_len']}) but the checkpoint reads {ours!r} tokens (vocab"
                    f" {dataset.vocab_size}, seq_len {dataset.seq_len}); prepare it with the same"
                    " tokenizer and seq_len")
  held_out = manifest["splits"]["eval"]
  records = TokenRecords(grain.sources.ArrayRecordDataSource(files.local_copies(
      [epath.Path(path) / f for f in held_out["files"]])), dataset.seq_len, dataset.vocab_size)
  report = {"path": path, "kind": "prepared", "split": "eval", "source": manifest["source"],
            "documents": held_out["documents"], "dropped_tokens": held_out["dropped_tokens"]}
  return dataclasses.replace(
      dataset, eval_examples=grain.MapDataset.source(records),
      chars_per_token=held_out["characters"] / held_out["encoded_tokens"],
      pad_id=manifest["pad_id"]), report


def zero_shot_dataset(dataset: Dataset, path: str) -> tuple[Dataset, dict]:
  """`dataset` with its held-out split replaced by the text (or prepared shards) at path,
  and a report of what the tokenizer made of it."""
  if dataset.tokenizer is None:
    raise DataError("this checkpoint's data has no tokenizer, so it cannot read --data")
  if (epath.Path(path) / MANIFEST).exists():
    return _prepared(dataset, path)
  tokenizer = dataset.tokenizer
  documents = read_text_path(path)  # joined as in training (ladd.data.text)
  ids = document_stream(tokenizer, documents)
  text = "".join(separated_documents(tokenizer, documents))
  decoded = tokenizer.decode(ids if tokenizer.eos_id is None else ids[ids != tokenizer.eos_id])
  windows = TokenWindows(ids, dataset.seq_len)
  if len(windows) == 0:
    raise DataError(f"{path} holds {len(ids)} tokens, less than one sequence of {dataset.seq_len}")
  unknown = getattr(tokenizer, "unknown_id", None)
  report = {
      "path": path, "kind": "text", "tokenizer": tokenizer.kind, "documents": len(documents),
      "characters": len(text), "tokens": int(len(ids)),
      "unrepresentable_characters": unrepresentable_characters(text, decoded),
      "unknown_tokens": int(np.sum(ids == unknown)) if unknown is not None else 0,
      "dropped_tail_tokens": int(len(ids) - len(windows) * dataset.seq_len),
  }
  covered = windows.covered_tokens()
  return dataclasses.replace(
      dataset, eval_examples=grain.MapDataset.source(windows),
      chars_per_token=chars_per_token(tokenizer, covered)), report
