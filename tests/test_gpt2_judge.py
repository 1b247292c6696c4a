"""A GPT-2 judge from a local safetensors checkpoint, checked against numpy."""

import json
import math

import numpy as np
import pytest

from ladd.data.tokenizers import Gpt2Tokenizer
from ladd.text_metrics import load_judge, sample_metrics

CONFIG = {"n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 16, "vocab_size": 50257,
          "layer_norm_epsilon": 1e-5}


def write_safetensors(path, tensors):
  """The format from its specification: u64 header length, JSON header, raw tensors."""
  header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, array in tensors.items():
    data = array.tobytes()
    header[name] = {"dtype": {"float32": "F32", "float16": "F16"}[array.dtype.name],
                    "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  encoded = json.dumps(header).encode()
  path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))


def random_gpt2(rng):
  d, v = CONFIG["n_embd"], CONFIG["vocab_size"]
  shapes = {"wte.weight": (v, d), "wpe.weight": (CONFIG["n_positions"], d),
            "ln_f.weight": (d,), "ln_f.bias": (d,)}
  for i in range(CONFIG["n_layer"]):
    shapes.update({f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,),
                   f"h.{i}.attn.c_attn.weight": (d, 3 * d), f"h.{i}.attn.c_attn.bias": (3 * d,),
                   f"h.{i}.attn.c_proj.weight": (d, d), f"h.{i}.attn.c_proj.bias": (d,),
                   f"h.{i}.ln_2.weight": (d,), f"h.{i}.ln_2.bias": (d,),
                   f"h.{i}.mlp.c_fc.weight": (d, 4 * d), f"h.{i}.mlp.c_fc.bias": (4 * d,),
                   f"h.{i}.mlp.c_proj.weight": (4 * d, d), f"h.{i}.mlp.c_proj.bias": (d,)})
  params = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
  params["wte.weight"] = params["wte.weight"].astype(np.float16)  # half-precision storage too
  return params


def numpy_gpt2_nll(params, ids):
  """-sum log p(ids) in float64 with <|endoftext|> as the first input."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  inputs = np.concatenate([[50256], ids[:-1]])
  t, d, heads = len(ids), CONFIG["n_embd"], CONFIG["n_head"]

  def norm(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]

  def conv1d(x, name):
    return x @ p[name + ".weight"] + p[name + ".bias"]

  x = p["wte.weight"][inputs] + p["wpe.weight"][:t]
  for i in range(CONFIG["n_layer"]):
    q, k, v = np.split(conv1d(norm(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn"), 3, -1)
    out = np.zeros_like(x)
    for h in range(heads):
      cols = slice(h * d // heads, (h + 1) * d // heads)
      scores = q[:, cols] @ k[:, cols].T / math.sqrt(d // heads)
      scores[np.triu_indices(t, 1)] = -np.inf
      w = np.exp(scores - scores.max(-1, keepdims=True))
      out[:, cols] = (w / w.sum(-1, keepdims=True)) @ v[:, cols]
    x = x + conv1d(out, f"h.{i}.attn.c_proj")
    hidden = conv1d(norm(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
    gelu = 0.5 * hidden * (1 + np.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden ** 3)))
    x = x + conv1d(gelu, f"h.{i}.mlp.c_proj")
  logits = norm(x, "ln_f") @ p["wte.weight"].T
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return -log_probs[np.arange(t), ids].sum()


def test_gpt2_judge_matches_numpy_reference(tmp_path):
  params = random_gpt2(np.random.default_rng(0))
  (tmp_path / "config.json").write_text(json.dumps(CONFIG))
  write_safetensors(tmp_path / "model.safetensors", {f"transformer.{k}": v for k, v in params.items()})
  judge = load_judge(str(tmp_path))
  texts = ["Hello world, this is a test.", "Short", "A sample that runs past one window of sixteen tokens, to be scored in two."]
  tokenizer = Gpt2Tokenizer()
  ids = [tokenizer.encode(t) for t in texts]
  expected = sum(numpy_gpt2_nll(params, seq[start:start + 16])
                 for seq in ids for start in range(0, len(seq), 16))
  metrics = sample_metrics([{"text": t + "<|endoftext|>tail not scored"} for t in texts], judge)
  assert metrics["tokens"] == sum(len(s) for s in ids) > 16
  np.testing.assert_allclose(metrics["gen_nll_per_token"] * metrics["tokens"], expected, rtol=1e-4)
  assert metrics["judge"]["method"] == "gpt2" and metrics["judge_tokenizer"]["kind"] == "gpt2"


def test_gpt2_judge_bad_checkpoint(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_judge(str(empty))
  (tmp_path / "config.json").write_text(json.dumps(CONFIG))
  write_safetensors(tmp_path / "model.safetensors", {"wte.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(ValueError, match="lacks .* GPT-2 tensor"):
    load_judge(str(tmp_path))
