"""Text datasets prepared with tfds (lm1b, text8, openwebtext, ...), read without
TensorFlow through `tfds.data_source`.

Nothing downloads: the dataset must already be prepared as ArrayRecord under
data.tfds_data_dir (`tfds build NAME --data_dir DIR --file_format=array_record` on a
machine with network access, then copy DIR).

Design. Each record is one document. Windows of seq_len tokens are cut from one
packed token stream per split, and that needs the split tokenised before random
access, so the first run reads each split once in record order, puts every record's
text followed by the tokenizer's end-of-text id (a newline for a tokenizer without
one; see ladd.data.text) and writes the tokens batch by batch to
tokens_{train,eval}.npy in the work directory. Later runs memory-map those files. The tokenizer is trained on the
first ~5 MB of train-split text. The result is deterministic and costs one pass
over the data on the first run.
"""

import dataclasses
from collections.abc import Iterator, Sequence

from ladd.data.errors import DataError

_TOKENIZER_SAMPLE_CHARS = 5_000_000
_RECORDS_PER_BATCH = 1000


def open_tfds_split(name: str, split: str, data_dir: str) -> Sequence[dict]:
  """Random-access records of a prepared split; DataError if it is not on disk."""
  import tensorflow_datasets as tfds  # optional extra with a slow import

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"unknown tfds dataset {name!r}; check data.tfds_name") from None
  if not builder.is_prepared():
    where = data_dir or tfds.core.constants.DATA_DIR
    raise DataError(f"tfds dataset {name!r} is not prepared under {where}; build it on"
                    f" a machine with network access (tfds build {name} --data_dir"
                    f" {where} --file_format=array_record) and copy it here")
  try:
    return builder.as_data_source(split=split)
  except (ValueError, NotImplementedError) as error:
    reason = str(error).splitlines()[0]
    raise DataError(f"cannot read split {split!r} of tfds dataset {name!r} ({reason});"
                    " check data.tfds_*_split and that it was built as array_record"
                    ) from None


def _record_text(record: dict, text_key: str) -> str:
  if text_key not in record:
    raise DataError(f"tfds records have no feature {text_key!r}; set"
                    f" data.tfds_text_key to one of {sorted(record)}")
  text = record[text_key]
  return text.decode("utf-8") if isinstance(text, bytes) else str(text)


@dataclasses.dataclass(frozen=True)
class TfdsCorpus:
  """A TextCorpus over tfds splits ('train', 'eval'), read lazily in record order."""
  splits: dict[str, Sequence[dict]]
  text_key: str

  def documents(self, split: str) -> Iterator[list[str]]:
    source = self.splits[split]
    for start in range(0, len(source), _RECORDS_PER_BATCH):
      records = source.__getitems__(range(start, min(start + _RECORDS_PER_BATCH,
                                                     len(source))))
      yield [_record_text(record, self.text_key) for record in records]

  def tokenizer_text(self) -> str:
    sample, size = [], 0
    for documents in self.documents("train"):
      if size >= _TOKENIZER_SAMPLE_CHARS:
        break
      text = "".join(doc + "\n" for doc in documents)
      sample.append(text)
      size += len(text)
    return "".join(sample)[:_TOKENIZER_SAMPLE_CHARS]
