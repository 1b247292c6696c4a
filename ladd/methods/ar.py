"""An autoregressive transformer: the baseline row of every comparison and the default
judge of generated text.

The DiT backbone with causal attention and no time conditioning reads
[BOS, x_0, ..., x_{L-2}] and predicts x_0, ..., x_{L-1}, so `nelbo` is the exact
-log p(x0) of all L tokens (BOS is the MASK id V, which this method never uses
otherwise) and exp(NLL / token) is a true perplexity, comparable per token with the
diffusion methods' bounds. Sampling is ancestral, left to right, one network call per
token: with sample.cache (the default) each call runs one position against a key/value
cache of the earlier ones (DiT.decode, O(L) per token); without it each call re-runs the
whole prefix (O(L^2) per token), the reference the cache is tested against.
"""

import dataclasses

import jax
import jax.numpy as jnp

from ladd.diffusion import masking, sampling
from ladd.methods.mdlm import counted_tokens
from ladd.models.dit import DiT, DiTConfig, train_flops_per_token


def shift_right(x0, bos_id):
  """The network input: BOS then x0 without its last token."""
  return jnp.concatenate([jnp.full_like(x0[:, :1], bos_id), x0[:, :-1]], axis=1)


class Autoregressive:
  name = "ar"
  quantities = {"nelbo": "exact"}  # nelbo is -log p(x0) itself (ladd.summary: a true perplexity)
  has_nstep_bound = False  # no diffusion sampler to bound: its likelihood is exact

  def __init__(self, config, vocab_size, pad_id=None):
    model_cfg = DiTConfig(vocab_size=vocab_size, seq_len=config.data.seq_len, **config.model)
    self.model_cfg = dataclasses.replace(model_cfg, causal=True, time_conditioning=False)
    self.vocab_size = vocab_size
    self.mask_id = self.bos_id = vocab_size  # BOS is the MASK id, which nothing else uses here
    self.pad_id = pad_id  # padded data: never predicted nor counted
    self.seq_len = config.data.seq_len

  def init_model(self, rngs):
    return DiT(self.model_cfg, rngs)

  @property
  def lr_scales(self):
    return {}

  def latent_steps(self, settings):
    del settings

  @property
  def flops_per_token(self):
    return train_flops_per_token(self.model_cfg, self.seq_len)

  def describe(self):
    return {"method": self.name, "likelihood": "exact", "dtype": self.model_cfg.dtype}

  def logits(self, model, x0):
    """[B, L, Vp]: position i predicts x0[:, i] from x0[:, :i]."""
    return model(shift_right(x0, self.bos_id), jnp.zeros((x0.shape[0],), jnp.float32))

  def token_nll(self, model, x0):
    """-log p(x0^i | x0^{<i}), 0 at padding; float32 [B, L]."""
    nll = masking.token_nll(self.logits(model, x0), x0, self.vocab_size)
    return jnp.where(counted_tokens(x0, self.pad_id), nll, 0.0)

  def nelbo(self, model, x0, key):
    """Per-sequence exact NLL in nats, [B]; no randomness."""
    del key
    return {"nelbo": self.token_nll(model, x0).sum(axis=-1)}

  def loss(self, model, x0, key, step):
    del key, step
    nll_per_token = self.token_nll(model, x0).sum() / counted_tokens(x0, self.pad_id).sum()
    return nll_per_token, {"nelbo_per_token": nll_per_token}

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    raise ValueError("the autoregressive method has no N-step sampler bound: its NLL is exact")

  def sampler_used(self, settings):
    if settings.latent_init != "prior":
      raise ValueError(f"ar draws no latent: latent_init {settings.latent_init!r} does not apply")
    return dict(sampling.settings_record(settings, True), sampler="autoregressive, left to right",
                steps=self.seq_len, N_x=self.seq_len, N_y=None)

  def sample(self, model, key, num_samples, settings, clamped=None):
    """Left to right from the tempered, truncated softmax (settings); clamped tokens are
    kept and read by later positions. (tokens [N, L], {"nfe": L}); settings.cache
    decodes from a key/value cache, with the same tokens as without it."""
    padded_vocab = self.model_cfg.padded_vocab
    allowed = jnp.arange(padded_vocab) < self.vocab_size
    if self.pad_id is not None:
      allowed &= jnp.arange(padded_vocab) != self.pad_id

    if clamped is not None:
      clamps = jnp.broadcast_to(jnp.asarray(clamped, jnp.int32), (num_samples, self.seq_len))

    def next_logits(x, i, cache):
      """Logits of position i given x[:, :i], and the cache."""
      if not settings.cache:
        return self.logits(model, x)[:, i], cache
      return model.decode(x[:, jnp.maximum(i - 1, 0)], i, cache)  # x[:, 0] is BOS at i = 0

    def body(i, carry):
      x, cache, key = carry
      key, step_key = jax.random.split(key)
      logits, cache = next_logits(x, i, cache)
      log_probs = jax.nn.log_softmax(jnp.where(allowed, logits.astype(jnp.float32), masking.NEG_INF), axis=-1)
      token = sampling.categorical(step_key, sampling.token_distribution(log_probs, settings), settings.noise_bits)
      if clamped is not None:
        token = jnp.where(clamps[:, i] == sampling.FREE, token, clamps[:, i])
      return x.at[:, i].set(token), cache, key

    # Positions not drawn yet hold BOS; causal attention never lets position i read them.
    x = jnp.full((num_samples, self.seq_len), self.bos_id, jnp.int32)
    cache = model.init_cache(num_samples) if settings.cache else ()
    x, _, _ = jax.lax.fori_loop(0, self.seq_len, body, (x, cache, key))
    return x, {"nfe": jnp.int32(self.seq_len)}
