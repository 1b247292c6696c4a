"""The one place that turns held-out totals into reported metrics (ladd.train, ladd.evaluate
and the experiment tables all call `summarize`).

What a number is comes from the method (`method.quantities`: name -> "exact" | "bound" |
"objective" | "diagnostic"); a name it does not list is a diagnostic. "exact" is -log p(x0)
itself (the autoregressive method): its perplexity is `ppl`, not a bound. Every quantity gets
`<name>_per_token` and `<name>_per_sequence` (nats); only a bound also gets a perplexity
bound and bits per token (and per character on text): `ppl_bound`, `bits_per_token`,
`bits_per_char` for "nelbo", `<name>_ppl_bound` etc. for any other bound (e.g. the N-step
bounds "nelbo_nstep_4"). Call it once per estimator (each with its own counts) and merge.

Totals from ladd.trainer.evaluate_nelbo also carry `draws` and `nelbo_squares`, and the
NELBO gets its Monte Carlo standard error, `nelbo_per_sequence_stderr` (and per token):
each draw (one t for one sequence) counts as independent; t is stratified across a batch,
which only lowers the true spread, so the figure errs high.
"""

import math

KINDS = ("exact", "bound", "objective", "diagnostic")
COUNTS = ("sequences", "tokens", "draws", "nelbo_squares")


def bound_key(name, metric):
  return metric if name == "nelbo" else f"{name}_{metric}"


def summarize(totals, quantities, chars_per_token=0.0):
  """totals: {"sequences": n, "tokens": n, name: summed nats, ...} (ladd.trainer.evaluate_nelbo);
  quantities: {name: kind}. Returns {metric: float, "kinds": {name: kind}}."""
  sequences, tokens = totals["sequences"], totals["tokens"]
  out, kinds = {}, {}
  for name, total in totals.items():
    if name in COUNTS:
      continue
    kind = quantities.get(name, "diagnostic")
    if kind not in KINDS:
      raise ValueError(f"{name}: unknown kind {kind!r}; one of {KINDS}")
    kinds[name] = kind
    per_token = total / tokens
    out[f"{name}_per_token"] = per_token
    out[f"{name}_per_sequence"] = total / sequences
    if kind in ("exact", "bound"):
      # an untrained latent can cost more nats than exp can hold: the bound is then inf
      ppl = "ppl" if kind == "exact" else "ppl_bound"
      out[bound_key(name, ppl)] = math.exp(per_token) if per_token < 700 else math.inf
      out[bound_key(name, "bits_per_token")] = per_token / math.log(2)
      if chars_per_token:
        out[bound_key(name, "bits_per_char")] = per_token / math.log(2) / chars_per_token
  if "nelbo_squares" in totals:
    mean = totals["nelbo"] / sequences
    spread = max(totals["nelbo_squares"] / totals["draws"] - mean * mean, 0.0)
    out["nelbo_per_sequence_stderr"] = math.sqrt(spread / totals["draws"])
    out["nelbo_per_token_stderr"] = out["nelbo_per_sequence_stderr"] * sequences / tokens
  out["kinds"] = kinds
  return out


def mark(value, bound, digits=1):
  """A table cell: a bound as is, anything else marked with a dagger (not a bound)."""
  return f"{value:.{digits}f}" + ("" if bound else "†")
