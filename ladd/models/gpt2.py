"""GPT-2 as a judge of generated text, from a local checkpoint in the layout the public
GPT-2 models use (a directory with `config.json` and `model.safetensors`: `wte`, `wpe`,
`h.{i}.ln_1`, `h.{i}.attn.c_attn` / `c_proj` (Conv1D: x @ W + b), `h.{i}.ln_2`,
`h.{i}.mlp.c_fc` / `c_proj`, `ln_f`, optionally under `transformer.`; the head is tied to
`wte`). Nothing downloads: the checkpoint must already be on disk.

safetensors is read with numpy (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw little-endian tensors).
"""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def read_safetensors(path) -> dict[str, np.ndarray]:
  data = Path(path).read_bytes()
  header_len = int.from_bytes(data[:8], "little")
  try:
    header = json.loads(data[8:8 + header_len])
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise ValueError(f"{path} is not a safetensors file (bad header)") from None
  body = memoryview(data)[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; expected one of"
                       f" {sorted(SAFETENSORS_DTYPES)}")
    start, end = info["data_offsets"]
    array = np.frombuffer(body[start:end], dtype=SAFETENSORS_DTYPES[info["dtype"]])
    tensors[name] = array.reshape(info["shape"]).astype(np.float32)
  return tensors


def load_gpt2(directory) -> tuple[dict, dict]:
  """(config {n_layer, n_head, n_embd, n_ctx, vocab_size, eps}, parameters as float32)."""
  directory = Path(directory)
  for name in ("config.json", "model.safetensors"):
    if not (directory / name).is_file():
      raise FileNotFoundError(f"no {name} in {directory}: a GPT-2 judge is a directory with"
                              " config.json and model.safetensors")
  raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
  config = {"n_layer": raw["n_layer"], "n_head": raw["n_head"], "n_embd": raw["n_embd"],
            "n_ctx": raw.get("n_positions", raw.get("n_ctx")), "vocab_size": raw["vocab_size"],
            "eps": raw.get("layer_norm_epsilon", 1e-5)}
  tensors = read_safetensors(directory / "model.safetensors")
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  needed = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"] + [
      f"h.{i}.{part}.{kind}" for i in range(config["n_layer"])
      for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
      for kind in ("weight", "bias")]
  missing = [k for k in needed if k not in tensors]
  if missing:
    raise ValueError(f"{directory}/model.safetensors lacks {len(missing)} GPT-2 tensor(s), e.g."
                     f" {missing[0]}")
  return config, {k: tensors[k] for k in needed}


def _layer_norm(x, weight, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def gpt2_logits(config, params, ids):
  """ids int [B, T] (T <= n_ctx) -> logits float32 [B, T, vocab]: GPT-2's forward pass."""
  b, t = ids.shape
  heads, d = config["n_head"], config["n_embd"]
  x = params["wte.weight"][ids] + params["wpe.weight"][:t]
  causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
  for i in range(config["n_layer"]):
    p = lambda name: params[f"h.{i}.{name}"]  # noqa: E731
    h = _layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), config["eps"])
    q, k, v = jnp.split(h @ p("attn.c_attn.weight") + p("attn.c_attn.bias"), 3, axis=-1)
    q, k, v = (y.reshape(b, t, heads, d // heads) for y in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
    x = x + attended @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
    h = _layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), config["eps"])
    h = jax.nn.gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), approximate=True)
    x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
  x = _layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], config["eps"])
  return x @ params["wte.weight"].T
