"""Tokenise a corpus once into ArrayRecord shards (ladd/data/prepare.py says how):

  python -m ladd.prepare --source=DIR_OR_FILE_OR_tfds:NAME --output=DIR [--tokenizer=gpt2]
      [--seq_len=1024] [--packing=wrap|pad] [--held_out_documents=100000] [--workers=2]

Train on the result with data.source="prepared", data.path=DIR (configs/openwebtext.py).
Rerunning the same command resumes an interrupted run.
"""

from absl import app
from absl import flags as absl_flags

from ladd import flags
from ladd.data.prepare import PACKINGS, Plan, prepare
from ladd.errors import one_line_errors

DEFAULTS = Plan(source="")
SOURCE = absl_flags.DEFINE_string("source", None, "A .txt / .jsonl file or directory, or tfds:NAME.")
TOKENIZER = absl_flags.DEFINE_string("tokenizer", DEFAULTS.tokenizer, "gpt2, or a tokenizers JSON file.")
SEQ_LEN = absl_flags.DEFINE_integer("seq_len", DEFAULTS.seq_len, "Tokens per sequence.")
PACKING = absl_flags.DEFINE_enum("packing", DEFAULTS.packing, PACKINGS, "wrap: EOS-joined documents cut into rows (OpenWebText); pad: one padded row per document (LM1B).")
HELD_OUT = absl_flags.DEFINE_integer("held_out_documents", DEFAULTS.held_out_documents, "The last this many documents form the eval split (MDLM's OpenWebText protocol: 100000).")
PER_SHARD = absl_flags.DEFINE_integer("documents_per_shard", DEFAULTS.documents_per_shard, "Documents per shard (the unit of work and of resuming).")
DOCUMENTS = absl_flags.DEFINE_enum("documents", DEFAULTS.documents, ["file", "line"], ".txt sources: one document per file or per line.")
TEXT_KEY = absl_flags.DEFINE_string("text_key", DEFAULTS.text_key, "The text field of .jsonl and tfds records.")
TFDS_SPLIT = absl_flags.DEFINE_string("tfds_split", DEFAULTS.tfds_split, "tfds split to read (held-out documents come from its end).")
TFDS_DATA_DIR = absl_flags.DEFINE_string("tfds_data_dir", DEFAULTS.tfds_data_dir, "tfds data directory (prepared already; nothing downloads).")
WORKERS = absl_flags.DEFINE_integer("workers", 2, "Worker processes (1: in this process).")
STOP_AFTER = absl_flags.DEFINE_integer("stop_after_shards", 0, "Stop after this many new shards (0: finish); rerun to resume.")

absl_flags.declare_key_flag("output")  # defined in ladd.flags, listed by --helpshort here


def main(argv):
  del argv
  with one_line_errors("ladd.prepare"):
    if not SOURCE.value or not flags.OUTPUT.value:
      raise ValueError("--source and --output are required")
    if WORKERS.value < 1 or STOP_AFTER.value < 0:
      raise ValueError(f"--workers must be >= 1 and --stop_after_shards >= 0, got"
                       f" {WORKERS.value} and {STOP_AFTER.value}")
    plan = Plan(source=SOURCE.value, tokenizer=TOKENIZER.value, seq_len=SEQ_LEN.value,
                packing=PACKING.value, held_out_documents=HELD_OUT.value,
                documents_per_shard=PER_SHARD.value, documents=DOCUMENTS.value,
                text_key=TEXT_KEY.value, tfds_split=TFDS_SPLIT.value,
                tfds_data_dir=TFDS_DATA_DIR.value)
    prepare(plan, flags.OUTPUT.value, WORKERS.value, STOP_AFTER.value,
            log=lambda line: print(f"ladd.prepare: {line}", flush=True))


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.prepare"))
