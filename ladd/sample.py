"""Draw samples from a trained model's EMA weights:
`python -m ladd.sample --workdir=DIR --steps=64 --num_samples=8`.

Conditional generation: `--prompt="ROMEO:"` (prefix), `--suffix=...`, or
`--infill="To be, or ______ to be"` (every "_" is one generated token; text between gaps
is clamped). Clamped tokens are never changed.

Writes `<workdir>/samples.jsonl` (appending), one record per sample with what the sampler
used, the conditioning, the token ids and the decoded text, and prints the text.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags as absl_flags

from ladd import files, flags
from ladd.config import default_config
from ladd.diffusion.sampling import SamplerSettings
from ladd.errors import one_line_errors
from ladd.generate import clamped_from_text, draw_long
from ladd.job import load_trained

BATCH_SIZE = absl_flags.DEFINE_integer("batch_size", 0, "Samples per device call (0 = all at once).")
TEMPERATURE = absl_flags.DEFINE_float("temperature", None, "Softmax temperature (default: config sample.temperature).")
FINAL_FILL = absl_flags.DEFINE_enum("final_fill", None, ["sample", "argmax"], "How the last step fills remaining masks.")
LATENT_STEPS = absl_flags.DEFINE_integer("latent_steps", None, "LADD sequential schedule: latent steps N_y (default: config sample.latent_steps; 0 = steps).")
LATENT_SAMPLER = absl_flags.DEFINE_enum("latent_sampler", None, ["ddim", "ancestral"], "Co-LADD latent step (default: config sample.latent_sampler).")
TOP_K = absl_flags.DEFINE_integer("top_k", None, "Keep the k most probable tokens per position; 0 = all (default: config sample.top_k).")
TOP_P = absl_flags.DEFINE_float("top_p", None, "Nucleus: keep the most probable tokens holding this mass; 1 = all (default: config sample.top_p).")
NOISE_BITS = absl_flags.DEFINE_integer("noise_bits", None, "Random bits per Gumbel draw: 32 (float32 uniform) or 64 (default: config sample.noise_bits).")
PROMPT = absl_flags.DEFINE_string("prompt", "", "Text every sample starts with.")
SUFFIX = absl_flags.DEFINE_string("suffix", "", "Text every sample ends with.")
INFILL = absl_flags.DEFINE_string("infill", "", "Template from position 0; each '_' is a generated token, the rest is kept.")
LENGTH = absl_flags.DEFINE_integer("length", 0, "Tokens per sample; beyond the model's sequence length, block-wise: each block continues the last --block_keep tokens (0 = one block).")
BLOCK_KEEP = absl_flags.DEFINE_integer("block_keep", None, "Tokens of the previous block clamped as each next block's prefix (default: half the sequence).")
NO_CACHE = absl_flags.DEFINE_bool("no_cache", False, "Call the network at every step even when nothing changed.")
QUIET = absl_flags.DEFINE_bool("quiet", False, "Do not print the decoded samples.")

for shared in ("steps", "num_samples", "seed", "checkpoint_step", "params", "output", "latent_init", "latent_candidates"):  # defined in ladd.flags, listed by --helpshort here
  absl_flags.declare_key_flag(shared)


def main(argv):
  del argv
  with one_line_errors("ladd.sample"):
    flags.start_distributed()
    job, step, params, model_state = load_trained(flags.WORKDIR.value, flags.CHECKPOINT_STEP.value, flags.PARAMS.value)
    workdir = files.resolve(flags.WORKDIR.value)
    # sampler keys newer than the checkpoint's stored config take their defaults
    cfg = ml_collections.ConfigDict(dict(default_config().sample.to_dict(), **job.config.sample.to_dict()))
    if flags.STEPS.value is not None and len(flags.STEPS.value) != 1:
      raise ValueError(f"--steps takes one step count, got {','.join(flags.STEPS.value)!r}")
    steps = cfg.steps if flags.STEPS.value is None else flags.integers(flags.STEPS)[0]
    settings = SamplerSettings(
        steps=steps, temperature=flags.value_or(TEMPERATURE, cfg.temperature),
        final_fill=flags.value_or(FINAL_FILL, cfg.final_fill), cache=cfg.cache and not NO_CACHE.value,
        latent_steps=flags.value_or(LATENT_STEPS, cfg.latent_steps),
        latent_sampler=flags.value_or(LATENT_SAMPLER, cfg.latent_sampler),
        top_k=flags.value_or(TOP_K, cfg.top_k), top_p=flags.value_or(TOP_P, cfg.top_p),
        noise_bits=flags.value_or(NOISE_BITS, cfg.noise_bits), latent_init=flags.value_or(flags.LATENT_INIT, cfg.latent_init),
        latent_candidates=flags.value_or(flags.LATENT_CANDIDATES, cfg.latent_candidates))
    conditioning = {name: flag.value for name, flag in (("prompt", PROMPT), ("suffix", SUFFIX), ("infill", INFILL))
                    if flag.value}
    clamped = clamped_from_text(job.dataset, **conditioning) if conditioning else None
    num_samples = flags.value_or(flags.NUM_SAMPLES, cfg.num_samples)
    if num_samples < 1:
      raise ValueError(f"--num_samples must be >= 1, got {num_samples}")
    batch_size = BATCH_SIZE.value or num_samples
    seed = flags.value_or(flags.SEED, cfg.seed)

    seq_len = job.method.seq_len
    length = LENGTH.value or seq_len
    if length > seq_len and {"suffix", "infill"} & set(conditioning):
      raise ValueError(f"beyond the sequence ({seq_len} tokens) blocks continue a prefix: --suffix and"
                       f" --infill do not combine with --length={length}")
    start = time.time()
    tokens, used = draw_long(job, params, model_state, settings, num_samples, batch_size, seed, clamped,
                             length, flags.value_or(BLOCK_KEEP, seq_len // 2))
    seconds = time.time() - start
    exact = job.dataset.exact
    true_nll = -exact.log_prob(np.stack(tokens)) if exact is not None and length == seq_len else None
    base = dict(job.method.describe(), **used, **conditioning, seed=seed, checkpoint_step=int(step),
                params=flags.PARAMS.value)
    output = flags.OUTPUT.value or os.path.join(workdir, "samples.jsonl")
    if jax.process_index() == 0:
      with files.open_append(output) as f:
        for i, row in enumerate(tokens):
          record = dict(base, index=i, tokens=row.tolist(), text=job.dataset.decode(row))
          if true_nll is not None:
            record["true_nll"] = float(true_nll[i])
          f.write(json.dumps(record) + "\n")
      if not QUIET.value:
        for i, row in enumerate(tokens):
          print(f"--- sample {i} ---\n{job.dataset.decode(row)}")
      summary = f"{num_samples} samples, {settings.steps} steps, NFE {used['nfe']:g}, {seconds:.1f}s -> {output}"
      if true_nll is not None:
        summary += f"; mean true NLL {true_nll.mean():.2f} nats/sequence"
      print(summary, flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.sample"))
