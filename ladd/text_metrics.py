"""Sample quality of generated text: generative perplexity under an autoregressive judge,
unigram entropy and repeated n-grams (`ladd.evaluate --samples=FILE --judge=WORKDIR`).

Every sample's text (a `ladd.sample` record) is cut at the first end-of-text token the
judge's tokenizer knows, re-tokenised with the judge's tokenizer and scored by the
judge's exact NLL: the text is read in windows of the judge's sequence length, each
starting from BOS. Gen-PPL = exp(total NLL / total tokens) pooled over all samples.
Entropy: per sample, the entropy in nats of its token-frequency histogram (judge
tokens), averaged over samples; mode collapse shows as low entropy with a low gen-PPL.
Repeated n-grams: the share of a sample's n-grams that repeat an earlier one, pooled.
"""

import collections
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from ladd import files

NGRAMS = (2, 3, 4)
# Fields of a ladd.sample record that describe the sample, not the sampler.
_PER_SAMPLE_FIELDS = ("index", "text", "true_nll")


def unigram_entropy(ids: np.ndarray) -> float:
  """Entropy (nats) of the empirical distribution of a sample's tokens; 0 for an empty one."""
  if len(ids) == 0:
    return 0.0
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def repeated_ngrams(ids: np.ndarray, n: int) -> tuple[int, int]:
  """(n-grams that repeat an earlier n-gram of the same sample, all n-grams)."""
  grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
  return len(grams) - len(set(grams)), len(grams)


def cut_at_eos(text: str, eos_text: str | None) -> str:
  return text.split(eos_text, 1)[0] if eos_text else text


def read_samples(path: str) -> list[dict]:
  records = []
  with epath.Path(path).open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          raise ValueError(f"{path}:{number} is not a JSON record (ladd.sample writes one per line)") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
          raise ValueError(f"{path}:{number} has no \"text\" field; give a ladd.sample samples.jsonl")
        records.append(record)
  if not records:
    raise ValueError(f"{path} holds no samples")
  return records


def sampler_records(records: list[dict]) -> list[dict]:
  """The distinct sampler settings in the file (each with its sample count)."""
  counts = collections.Counter(
      json.dumps({k: v for k, v in r.items() if k not in _PER_SAMPLE_FIELDS}, sort_keys=True)
      for r in records)
  return [dict(json.loads(key), samples=count) for key, count in counts.items()]


class Judge:
  """Scores token sequences with an autoregressive model's exact NLL.

  `nll_sums(windows [B, L], weights [B, L]) -> [B]` sums the weighted -log p(x_i | x_<i)
  of each window, every window read from BOS.
  """

  def __init__(self, nll_sums, tokenizer, seq_len, batch_size, description):
    self._nll_sums, self.tokenizer, self.seq_len = nll_sums, tokenizer, seq_len
    self.batch_size, self.description = batch_size, description

  @classmethod
  def from_job(cls, job, params, model_state, description):
    """A trained ladd `ar` checkpoint and the tokenizer of its data."""
    if job.method.quantities["nelbo"] != "exact":
      raise ValueError(f"the judge must be an autoregressive checkpoint (method 'ar'), got"
                       f" {job.method.name!r}")
    if job.dataset.tokenizer is None:
      raise ValueError("the judge's data has no tokenizer, so it cannot read text")
    method, graphdef = job.method, job.trainer.graphdef

    @jax.jit
    def nll_sums(windows, weights):
      model = nnx.merge(graphdef, params, model_state)
      return jnp.sum(method.token_nll(model, windows) * weights, axis=-1)
    return cls(nll_sums, job.dataset.tokenizer, method.seq_len, job.config.data.eval_batch_size,
               description)

  @classmethod
  def from_gpt2(cls, directory, batch_size=8):
    """GPT-2 from a local safetensors checkpoint with the GPT-2 tokenizer; BOS is
    <|endoftext|>, as GPT-2 was trained with it between documents."""
    from ladd.data.tokenizers import Gpt2Tokenizer
    from ladd.models import gpt2
    config, params = gpt2.load_gpt2(directory)
    params = {name: jnp.asarray(value) for name, value in params.items()}
    tokenizer = Gpt2Tokenizer()
    if config["vocab_size"] != tokenizer.vocab_size:
      raise ValueError(f"{directory} has a vocabulary of {config['vocab_size']}, GPT-2's is"
                       f" {tokenizer.vocab_size}")
    bos = tokenizer.eos_id

    @jax.jit
    def nll_sums(windows, weights):
      inputs = jnp.concatenate([jnp.full_like(windows[:, :1], bos), windows[:, :-1]], axis=1)
      log_probs = jax.nn.log_softmax(gpt2.gpt2_logits(config, params, inputs), axis=-1)
      nll = -jnp.take_along_axis(log_probs, windows[..., None], axis=-1)[..., 0]
      return jnp.sum(nll * weights, axis=-1)
    description = {"method": "gpt2", "likelihood": "exact", "path": str(directory),
                   "n_layer": config["n_layer"], "n_embd": config["n_embd"], "seq_len": config["n_ctx"],
                   "bos": "<|endoftext|>"}
    return cls(nll_sums, tokenizer, config["n_ctx"], batch_size, description)

  def eos_text(self) -> str | None:
    eos = self.tokenizer.eos_id
    return None if eos is None else self.tokenizer.decode([eos])

  def windows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(windows [n, L], weights [n, L]): ids cut into windows of the judge's length, the
    last one filled with id 0 at weight 0 (causal: the filler is never read)."""
    count = max(1, -(-len(ids) // self.seq_len))
    padded = np.zeros(count * self.seq_len, np.int32)
    padded[:len(ids)] = ids
    weights = np.zeros(count * self.seq_len, np.float32)
    weights[:len(ids)] = 1.0
    return padded.reshape(count, self.seq_len), weights.reshape(count, self.seq_len)

  def sequence_nlls(self, sequences: list[np.ndarray]) -> np.ndarray:
    """The judge's NLL (nats) of each token sequence [len(sequences)], float64; an empty
    sequence scores 0."""
    scored = [(i, *self.windows(ids)) for i, ids in enumerate(sequences) if len(ids)]
    owner = np.concatenate([np.full(len(windows), i) for i, windows, _ in scored])
    windows = np.concatenate([windows for _, windows, _ in scored])
    weights = np.concatenate([weights for _, _, weights in scored])
    per_window = np.zeros(len(windows))
    for start in range(0, len(windows), self.batch_size):
      batch, batch_weights = windows[start:start + self.batch_size], weights[start:start + self.batch_size]
      rows = len(batch)
      fill = self.batch_size - rows  # one compiled shape
      batch = np.concatenate([batch, np.zeros((fill, self.seq_len), np.int32)])
      batch_weights = np.concatenate([batch_weights, np.zeros((fill, self.seq_len), np.float32)])
      per_window[start:start + rows] = np.asarray(self._nll_sums(batch, batch_weights), np.float64)[:rows]
    return np.bincount(owner, weights=per_window, minlength=len(sequences))


def pooled_stderr(nlls: np.ndarray, tokens: np.ndarray) -> float:
  """Standard error of the pooled NLL per token sum(nlls) / sum(tokens) over independent
  samples (the ratio estimator's delta method); 0 for a single sample."""
  n = len(nlls)
  if n < 2:
    return 0.0
  ratio = nlls.sum() / tokens.sum()
  residuals = nlls - ratio * tokens
  return float(np.sqrt(np.sum(residuals ** 2) / (n * (n - 1))) / tokens.mean())


def sample_metrics(records: list[dict], judge: Judge) -> dict:
  """Gen-PPL, entropy and repeated n-grams of the samples' texts, with what produced them."""
  eos_text = judge.eos_text()
  sequences = [judge.tokenizer.encode(cut_at_eos(r["text"], eos_text)) for r in records]
  lengths = np.array([len(ids) for ids in sequences], np.float64)
  tokens = int(lengths.sum())
  if tokens == 0:
    raise ValueError("every sample is empty before its first end-of-text token")
  nlls = judge.sequence_nlls(sequences)
  nll = float(nlls.sum())
  repeats = {n: np.sum([repeated_ngrams(ids, n) for ids in sequences], axis=0) for n in NGRAMS}
  return {
      "gen_ppl": float(np.exp(nll / tokens)),
      "gen_nll_per_token": nll / tokens,
      "gen_nll_per_token_stderr": pooled_stderr(nlls, lengths),
      "unigram_entropy": float(np.mean([unigram_entropy(ids) for ids in sequences])),
      **{f"repeated_{n}grams": float(r[0] / r[1]) if r[1] else 0.0 for n, r in repeats.items()},
      "samples": len(records), "tokens": int(tokens),
      "empty_samples": sum(len(ids) == 0 for ids in sequences),
      "protocol": ("text cut at the first end-of-text token (excluded), re-tokenised by the judge,"
                   f" scored in windows of {judge.seq_len} tokens from BOS; gen-PPL pooled over"
                   " tokens, its stderr over samples (delta method); entropy: mean over samples of the unigram entropy (nats)"),
      "judge": judge.description,
      "judge_tokenizer": {"kind": judge.tokenizer.kind, "vocab_size": judge.tokenizer.vocab_size,
                          "eos_id": judge.tokenizer.eos_id},
      "samplers": sampler_records(records),
  }


def load_judge(path: str, step: int | None = None) -> Judge:
  """A GPT-2 safetensors directory (config.json + model.safetensors) or a ladd `ar` work
  directory (its EMA parameters)."""
  if (Path(path) / "model.safetensors").exists():
    return Judge.from_gpt2(path)
  from ladd.job import load_trained  # builds the judge's job from its checkpoint
  job, step, params, model_state = load_trained(path, step, "ema")
  description = dict(job.method.describe(), workdir=path, checkpoint_step=int(step),
                     params="ema", seq_len=job.method.seq_len, vocab_size=job.dataset.vocab_size)
  return Judge.from_job(job, params, model_state, description)


def frontier_table(rows: list[dict]) -> str:
  """Markdown: one line per (work directory, steps, temperature), sorted as given."""
  lines = ["| workdir | method | steps | NFE | temperature | gen-PPL | entropy | rep. 4-grams |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['workdir']} | {r['method']} | {r['steps']} | {r['nfe']:g} | {r['temperature']:g} |"
                 f" {r['gen_ppl']:.2f} | {r['unigram_entropy']:.3f} | {r['repeated_4grams']:.3f} |")
  return "\n".join(lines) + "\n"


def plot_frontier(rows: list[dict], path: str) -> None:
  """Two panels: gen-PPL against entropy and against NFE, one line per work directory."""
  try:
    import matplotlib
  except ImportError as e:
    raise ValueError("the sweep plot needs matplotlib: pip install -e '.[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for workdir in dict.fromkeys(r["workdir"] for r in rows):
    mine = [r for r in rows if r["workdir"] == workdir]
    label = f"{mine[0]['method']} ({workdir})"
    left.plot([r["unigram_entropy"] for r in mine], [r["gen_ppl"] for r in mine], "o", label=label)
    right.plot([r["nfe"] for r in mine], [r["gen_ppl"] for r in mine], "o-", label=label)
  left.set(xlabel="unigram entropy (nats)", ylabel="gen-PPL", yscale="log")
  right.set(xlabel="NFE", ylabel="gen-PPL", xscale="log", yscale="log")
  right.legend(fontsize=7)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=100)
  plt.close(fig)
