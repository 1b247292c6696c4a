"""The Dataset every source builds: train/eval examples plus how to read them.

Examples are int32 windows of seq_len clean tokens; masking happens on device
inside the jitted step, so the pipeline stays deterministic and resumes exactly.
"""

import dataclasses
import itertools
from collections.abc import Iterator

import grain
import numpy as np

from ladd.data.errors import DataError
from ladd.data.exact import ExactDistribution
from ladd.data.tokenizers import Tokenizer

# Grain's default reads 500 batches ahead on 16 threads: GBs of memory for large
# batches and CPU burnt by iterators already abandoned. A few batches ahead keep up.
_READ_AHEAD = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def _check_process(process_index: int, process_count: int, local_batch: int) -> None:
  if not 0 <= process_index < process_count or local_batch < 1:
    raise DataError(f"need 0 <= process_index < process_count and local_batch >= 1,"
                    f" got {process_index}, {process_count}, {local_batch}")


@dataclasses.dataclass(frozen=True)
class Dataset:
  vocab_size: int  # real symbols V; the model's MASK id is V
  seq_len: int
  train_examples: grain.MapDataset  # items: int32 [seq_len]
  eval_examples: grain.MapDataset
  shuffle_seed: int
  num_workers: int = 0
  tokenizer: Tokenizer | None = None  # None: ids are the data (binsaw, npy, ...)
  chars_per_token: float | None = None  # of the eval split, for bits per character
  is_character_level: bool = False
  exact: ExactDistribution | None = None  # the true distribution, where it is known
  mask_symbol: str = "[MASK]"
  id_separator: str = " "  # joins ids when there is no tokenizer
  pad_id: int | None = None  # per-document padded data: this id is padding, never counted

  def decode(self, ids: np.ndarray) -> str:
    """Text of a 1-D id sequence; ids >= vocab_size (MASK) print as mask_symbol."""
    ids = np.asarray(ids).reshape(-1).tolist()
    if self.tokenizer is None:
      return self.id_separator.join(
          self.mask_symbol if i >= self.vocab_size else str(i) for i in ids)
    pieces = []
    for masked, run in itertools.groupby(ids, key=lambda i: i >= self.vocab_size):
      run = list(run)
      pieces.append(self.mask_symbol * len(run) if masked else self.tokenizer.decode(run))
    return "".join(pieces)

  def train_iterator(self, process_index: int, process_count: int,
                     local_batch: int) -> grain.DatasetIterator:
    """Infinite shuffled [local_batch, seq_len] int32 batches; get_state()/set_state()
    resume exactly.

    Process p reads rows [p * local_batch, (p + 1) * local_batch) of every global
    batch, so the global batch (and the run) does not depend on the process count.
    Grain batches lazily: each process reads only its own rows.
    """
    _check_process(process_index, process_count, local_batch)
    if len(self.train_examples) < local_batch * process_count:
      raise DataError(f"the train split has {len(self.train_examples)} examples, fewer"
                      f" than one global batch of {local_batch * process_count}")
    blocks = self.train_examples.shuffle(self.shuffle_seed).repeat().batch(
        local_batch, drop_remainder=True)
    pipeline = blocks[process_index::process_count].to_iter_dataset(_READ_AHEAD)
    if self.num_workers > 0:
      pipeline = pipeline.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.num_workers))
    return iter(pipeline)

  def eval_batches(self, process_index: int, process_count: int, local_batch: int,
                   num_batches: int | None = None) -> Iterator[np.ndarray]:
    """The held-out split in fixed order, [local_batch, seq_len] int32 per process;
    every process yields the same number of batches. None: the whole split once."""
    _check_process(process_index, process_count, local_batch)
    global_batch = local_batch * process_count
    available = len(self.eval_examples) // global_batch
    if available == 0:
      raise DataError(f"the held-out split has {len(self.eval_examples)} examples, fewer"
                      f" than one global eval batch of {global_batch}; lower"
                      " data.eval_batch_size or hold out more data")
    if num_batches is None:
      num_batches = available
    if not 0 <= num_batches <= available:
      raise DataError(f"asked for {num_batches} eval batches but the held-out split holds"
                      f" {available} batches of {global_batch} examples; ask for fewer")
    blocks = self.eval_examples.batch(local_batch, drop_remainder=True)
    return (blocks[i * process_count + process_index] for i in range(num_batches))
