"""Tokenise a corpus once into ArrayRecord shards of fixed-length sequences
(`python -m ladd.prepare`), so that training and evaluation read ids on every host.

Documents, in a fixed order: each .txt file (or each line, documents="line") under
a path, each line of .jsonl files (field text_key), or each record of a prepared tfds
split ("tfds:NAME"). The last held_out_documents documents form the eval split (the
MDLM protocol for OpenWebText holds out the last 100k). Each split is cut into shards
of documents_per_shard documents; a shard's documents are tokenised, joined by EOS
and wrapped into rows of seq_len ("wrap": its tail shorter than a row is dropped and
counted) or given one EOS-terminated row each, cut to seq_len and filled with the pad
id = the tokenizer's vocabulary size ("pad"). A shard depends only on its documents,
so any number of worker processes gives the same bytes.

Output directory:
  plan.json                 the settings; a rerun with other settings is refused
  tokenizer.json            the tokenizer (as saved in a training work directory)
  {split}-{i:05d}.array_record, {split}-{i:05d}.done.json
                            a shard and its completion marker (its counts): a rerun
                            skips every shard that has a marker, so an interrupted
                            run resumes where it stopped
  manifest.json             written last, once every shard is done: tokenizer,
                            counts, split and source; data.source="prepared" reads it

The output may be a gs:// (or other ladd.files) URL: each shard is written to a local
temporary file and uploaded whole before its marker, so resuming works there too.
"""

import dataclasses
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable

import numpy as np
from etils import epath

from ladd import files
from ladd.data import streams
from ladd.data.errors import DataError
from ladd.data.tokenizers import BpeTokenizer, Gpt2Tokenizer, Tokenizer

MANIFEST = "manifest.json"
PLAN = "plan.json"
TOKENIZER = "tokenizer.json"
PACKINGS = ("wrap", "pad")
SPLITS = ("train", "eval")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Plan:
  source: str  # a .txt / .jsonl file or directory, or "tfds:NAME"
  tokenizer: str = "gpt2"  # "gpt2" or a tokenizers JSON file
  seq_len: int = 1024
  packing: str = "wrap"
  held_out_documents: int = 100_000
  documents_per_shard: int = 10_000
  documents: str = "file"  # .txt: one document per "file" or per "line"
  text_key: str = "text"  # .jsonl and tfds records
  tfds_split: str = "train"
  tfds_data_dir: str = ""

  def check(self) -> None:
    if self.packing not in PACKINGS:
      raise DataError(f"unknown packing {self.packing!r}; use wrap or pad")
    if self.documents not in ("file", "line"):
      raise DataError(f"unknown documents {self.documents!r}; use file or line")
    for name in ("seq_len", "documents_per_shard", "held_out_documents"):
      if getattr(self, name) < 1:
        raise DataError(f"{name} must be at least 1, got {getattr(self, name)}")


def load_plan_tokenizer(plan: Plan) -> Tokenizer:
  tokenizer = Gpt2Tokenizer() if plan.tokenizer == "gpt2" else BpeTokenizer.from_file(plan.tokenizer)
  if tokenizer.eos_id is None:
    raise DataError(f"the tokenizer {plan.tokenizer!r} has no <|endoftext|> token to"
                    " separate documents; add one or use gpt2")
  return tokenizer


# ---------------------------------------------------------------- documents

class FileDocuments:
  """Document i is the text of files[i]."""

  def __init__(self, files: list[str]):
    self.files = files

  def __len__(self) -> int:
    return len(self.files)

  def read(self, start: int, stop: int) -> list[str]:
    return [epath.Path(f).read_text(encoding="utf-8") for f in self.files[start:stop]]


class LineDocuments:
  """Document i is one line of one file, found by (file index, byte offset); JSONL
  lines give their text_key field."""

  def __init__(self, files: list[str], text_key: str | None):
    self.files, self.text_key = files, text_key
    file_ids, offsets = [], []
    for i, path in enumerate(files):
      with epath.Path(path).open("rb") as f:
        offset = 0
        for line in f:
          if line.strip():
            file_ids.append(i)
            offsets.append(offset)
          offset += len(line)
    self.file_ids, self.offsets = np.array(file_ids, np.int64), np.array(offsets, np.int64)

  def __len__(self) -> int:
    return len(self.offsets)

  def read(self, start: int, stop: int) -> list[str]:
    texts, file_ids = [], self.file_ids[start:stop]
    # one open per file, not per line: on an object store each open is a request
    for file_id in np.unique(file_ids):
      with epath.Path(self.files[file_id]).open("rb") as f:
        for offset in self.offsets[start:stop][file_ids == file_id]:
          f.seek(offset)
          line = f.readline().decode("utf-8").rstrip("\r\n")
          texts.append(line if self.text_key is None else self._field(line, file_id))
    return texts

  def _field(self, line: str, file_id: int) -> str:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      raise DataError(f"{self.files[file_id]} holds a line that is not JSON") from None
    if not isinstance(record, dict) or self.text_key not in record:
      raise DataError(f"{self.files[file_id]} holds a record without the field"
                      f" {self.text_key!r}; set --text_key")
    return str(record[self.text_key])


class TfdsDocuments:
  """Document i is record i of a prepared tfds split (opened lazily in each worker)."""

  def __init__(self, name: str, split: str, data_dir: str, text_key: str):
    self.name, self.split, self.data_dir, self.text_key = name, split, data_dir, text_key
    self._length = len(self._source())

  def _source(self):
    from ladd.data.tfds_text import open_tfds_split
    return open_tfds_split(self.name, self.split, self.data_dir)

  def __len__(self) -> int:
    return self._length

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_cached"}

  def read(self, start: int, stop: int) -> list[str]:
    from ladd.data.tfds_text import _record_text
    if "_cached" not in self.__dict__:
      self._cached = self._source()
    return [_record_text(r, self.text_key) for r in self._cached.__getitems__(range(start, stop))]


def open_documents(plan: Plan):
  if plan.source.startswith("tfds:"):
    return TfdsDocuments(plan.source[len("tfds:"):], plan.tfds_split, plan.tfds_data_dir,
                         plan.text_key)
  root = epath.Path(plan.source)
  found = files.files_under(root) if root.is_dir() else [root] if root.exists() else []
  found = [str(f) for f in found if f.suffix in (".txt", ".jsonl")]
  if not found:
    raise DataError(f"no .txt or .jsonl files at --source={plan.source!r}")
  kinds = {epath.Path(f).suffix for f in found}
  if len(kinds) > 1:
    raise DataError(f"{plan.source} mixes .txt and .jsonl files; prepare them separately")
  if kinds == {".jsonl"}:
    return LineDocuments(found, plan.text_key)
  return FileDocuments(found) if plan.documents == "file" else LineDocuments(found, None)


# ---------------------------------------------------------------- shards

@dataclasses.dataclass(frozen=True)
class Shard:
  split: str
  index: int
  start: int  # documents [start, stop)
  stop: int

  @property
  def name(self) -> str:
    return f"{self.split}-{self.index:05d}"


def plan_shards(num_documents: int, held_out: int, per_shard: int) -> list[Shard]:
  if held_out >= num_documents:
    raise DataError(f"the corpus has {num_documents} documents; holding out {held_out}"
                    " leaves none to train on: lower --held_out_documents")
  bounds = {"train": (0, num_documents - held_out), "eval": (num_documents - held_out, num_documents)}
  shards = []
  for split, (first, end) in bounds.items():
    for i, start in enumerate(range(first, end, per_shard)):
      shards.append(Shard(split, i, start, min(start + per_shard, end)))
  return shards


def shard_rows(plan: Plan, tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, dict]:
  """The shard's rows and its counts."""
  documents = tokenizer.encode_documents(texts)
  if plan.packing == "wrap":
    rows, dropped = streams.pack_documents(documents, plan.seq_len, tokenizer.eos_id)
  else:
    rows, dropped = streams.pad_documents(documents, plan.seq_len, tokenizer.eos_id,
                                          tokenizer.vocab_size)
  counted = rows.size if plan.packing == "wrap" else int(np.sum(rows != tokenizer.vocab_size))
  return rows, {"documents": len(texts), "sequences": len(rows), "tokens": counted,
                "dropped_tokens": int(dropped), "characters": sum(len(t) for t in texts),
                "encoded_tokens": int(sum(len(d) + 1 for d in documents))}


def _write_records(path: epath.Path, rows: np.ndarray) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter
  # ArrayRecord writes local files only; a shard for an object store is uploaded whole
  if files.is_local(path):
    tmp = str(path.with_name(f"{path.name}.{os.getpid()}.tmp"))
  else:
    handle, tmp = tempfile.mkstemp(suffix=".array_record")
    os.close(handle)
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for row in rows:
    writer.write(np.ascontiguousarray(row, "<i4").tobytes())
  writer.close()
  files.upload(tmp, path)


def _write_json(path: epath.Path, value) -> None:
  files.write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


_WORKER = {}  # per worker process: the plan, its tokenizer and documents


def _init_worker(plan: Plan, documents) -> None:
  _WORKER.update(plan=plan, tokenizer=load_plan_tokenizer(plan), documents=documents)


def _run_shard(args) -> tuple[Shard, dict]:
  shard, output = args
  plan, tokenizer, documents = _WORKER["plan"], _WORKER["tokenizer"], _WORKER["documents"]
  rows, counts = shard_rows(plan, tokenizer, documents.read(shard.start, shard.stop))
  _write_records(epath.Path(output) / f"{shard.name}.array_record", rows)
  _write_json(epath.Path(output) / f"{shard.name}.done.json", counts)  # last: the shard is complete
  return shard, counts


def _check_plan(output: epath.Path, plan: Plan) -> None:
  path = output / PLAN
  wanted = dataclasses.asdict(plan)
  if path.exists():
    found = json.loads(path.read_text(encoding="utf-8"))
    if found != wanted:
      changed = sorted(k for k in wanted if found.get(k) != wanted[k])
      raise DataError(f"{output} was prepared with other settings ({', '.join(changed)});"
                      " use a fresh --output or the same flags to resume")
  else:
    _write_json(path, wanted)


def prepare(plan: Plan, output: str, workers: int = 2, stop_after_shards: int = 0,
            log: Callable[[str], None] = print) -> dict | None:
  """Prepares (or resumes preparing) `output`; returns the manifest, or None when it
  stopped after `stop_after_shards` new shards (0 = never stops early)."""
  plan.check()
  output = files.resolve(output)
  files.make_workdir(output)
  out = epath.Path(output)
  _check_plan(out, plan)
  if (out / MANIFEST).exists():
    log(f"{output} is already prepared")
    return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
  tokenizer = load_plan_tokenizer(plan)
  documents = open_documents(plan)
  shards = plan_shards(len(documents), plan.held_out_documents, plan.documents_per_shard)
  pending = [s for s in shards if not (out / f"{s.name}.done.json").exists()]
  done = len(shards) - len(pending)
  log(f"{len(documents)} documents, {len(shards)} shards, {done} done already,"
      f" {workers} worker(s)")
  if stop_after_shards:
    pending = pending[:stop_after_shards]
  jobs = [(shard, str(out)) for shard in pending]
  if workers > 1:
    # spawn: tokenizers' thread pool does not survive fork
    with multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(plan, documents)) as pool:
      for shard, counts in pool.imap_unordered(_run_shard, jobs):
        done += 1
        log(f"[{done}/{len(shards)}] {shard.name}: {counts['sequences']} sequences")
  else:
    _init_worker(plan, documents)
    for job in jobs:
      shard, counts = _run_shard(job)
      done += 1
      log(f"[{done}/{len(shards)}] {shard.name}: {counts['sequences']} sequences")
  if done < len(shards):
    log(f"stopped after {len(pending)} new shard(s); rerun the same command to resume")
    return None
  tokenizer.save(out / TOKENIZER)
  manifest = _manifest(plan, tokenizer, shards, out)
  _write_json(out / MANIFEST, manifest)
  log(f"prepared {output}: " + ", ".join(
      f"{split} {manifest['splits'][split]['sequences']} sequences" for split in SPLITS))
  return manifest


def _manifest(plan: Plan, tokenizer: Tokenizer, shards: list[Shard], out: epath.Path) -> dict:
  splits = {}
  for split in SPLITS:
    mine = [s for s in shards if s.split == split]
    counts = [json.loads((out / f"{s.name}.done.json").read_text(encoding="utf-8")) for s in mine]
    splits[split] = {"files": [f"{s.name}.array_record" for s in mine],
                     "first_document": mine[0].start, "stop_document": mine[-1].stop,
                     **{key: sum(c[key] for c in counts) for key in counts[0]}}
  padded = plan.packing == "pad"
  return {
      "format_version": FORMAT_VERSION, "source": plan.source, "plan": dataclasses.asdict(plan),
      "seq_len": plan.seq_len, "packing": plan.packing,
      "tokenizer": {"kind": tokenizer.kind, "file": TOKENIZER, "spec": plan.tokenizer,
                    "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
      "vocab_size": tokenizer.vocab_size + padded,  # the pad id is one past the tokenizer's
      "pad_id": tokenizer.vocab_size if padded else None,
      "held_out": f"the last {plan.held_out_documents} documents", "splits": splits,
  }


def read_manifest(directory: str) -> dict:
  """The manifest of a complete prepared directory (local or a URL), with every shard present."""
  path = epath.Path(directory) / MANIFEST
  if not directory or not path.exists():
    raise DataError(f"no prepared data at data.path={directory!r} (no {MANIFEST}); run"
                    " python -m ladd.prepare --output=DIR first, or finish it (rerun resumes)")
  manifest = json.loads(path.read_text(encoding="utf-8"))
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path} has format version {manifest.get('format_version')}, this"
                    f" ladd reads {FORMAT_VERSION}; prepare again")
  missing = [f for s in SPLITS for f in manifest["splits"][s]["files"]
             if not (epath.Path(directory) / f).exists()]
  if missing:
    raise DataError(f"{directory} lacks {len(missing)} shard(s) its manifest lists, e.g."
                    f" {missing[0]}; copy them or prepare again")
  return manifest
