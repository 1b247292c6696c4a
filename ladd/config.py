"""The complete default configuration. Every key the code reads is defined here;
files in configs/ override values (big_vision style `get_config(arg)` with variants).
"""

import ml_collections


def default_config():
  c = ml_collections.ConfigDict()
  c.method = "mdlm"
  c.seed = 0

  c.data = dict(
      # tokenizer: char | bpe (trained, or loaded from tokenizer_path, any `tokenizers`
      # JSON file) | gpt2 (the exact GPT-2 BPE, shipped with the package).
      source="shakespeare", tokenizer="char", tokenizer_path="", bpe_vocab_size=2048, seq_len=256,
      batch_size=64, eval_batch_size=64, shuffle_seed=0, num_workers=0,
      path="", eval_path="", vocab_size=0,
      tfds_name="", tfds_data_dir="", tfds_train_split="train",
      tfds_eval_split="validation", tfds_text_key="text",
      binsaw_saws=2, binsaw_floor=0.01,
      sudoku_pool=256,  # sudoku: boards are transforms of this many backtracked grids per split
      eval_plays=("hamlet", "the-tempest", "twelfth-night"),
      # Toys with an exact joint (method.md §5; sources checkerboard | swiss_roll | circles |
      # copy | parity | mixture | product): 2D points in toy_bins bins per coordinate;
      # copy/mixture/product symbols; P(x2 = x1) extra mass; mixture components and the seed
      # that draws the per-position tables (product: one component).
      toy_bins=128, toy_vocab=8, copy_prob=0.9, mixture_components=4, mixture_seed=0,
  )
  c.model = dict(
      d_model=256, n_layers=4, n_heads=4, mlp_ratio=4, cond_dim=128,
      time_conditioning=False, dtype="float32", attention_impl="xla", vocab_pad_multiple=128,
      remat="none",  # none | full | dots_saveable: what each block keeps for the backward pass
      scan_layers=False,  # one nnx.scan over stacked blocks (one compiled layer) instead of a Python loop
      # learned: absolute positions added to every token stream's input (without them an
      # all-MASK input gives every position the same output); none: MDLM's RoPE-only DiT.
      position_embedding="learned",
  )
  c.diffusion = dict(
      schedule="linear",  # linear | cosine | polynomial
      eps=1e-4,
      power=2.0,  # polynomial schedule exponent
      train_loss="nelbo",  # nelbo (weighted, per token) | masked_ce (unweighted, per token)
  )
  c.optim = dict(
      lr=3e-4, warmup_steps=100, decay="cosine", min_lr_ratio=0.1,
      weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=1.0, ema_decay=0.999,
  )
  c.train = dict(
      steps=1000, log_every=50, eval_every=500, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=3,
      microbatches=1,  # gradient accumulation: the batch in k micro-batches, one gradient step
      profile_steps=(0, 0),  # (START, COUNT): jax.profiler trace of steps START+1..START+COUNT; COUNT 0 = off
      peak_tflops_per_device=0.0,  # 0 = look up by device kind; unknown kinds report no MFU
      # A non-finite loss or gradient norm stops the run (never saved); True skips such
      # steps instead (their update is not applied; counted in metrics and on the console).
      skip_nonfinite=False,
  )
  # LADD (method.md §2): method "co_ladd" (Gaussian latent) or "di_ladd" (VQ codes).
  c.latent = dict(
      schedule="joint",  # joint (one network call per step) | sequential (latent first, then tokens)
      slots=1, dim=32,  # S' latent slots of d dims (Di: d = code vector dim D)
      encoder_layers=1, encoder_d_model=64, encoder_heads=2,
      # The token network must learn to read the encoder before the encoder can learn from it;
      # a slower encoder gives it time (binsaw co_seq, README "latent check": latent information
      # at step 240 / 600 is 10.7 / 23.1 nats at 0.1, -2.0 / 22.8 at 1.0).
      encoder_lr_scale=0.1,
      sigma0_mode="none", sigma0=0.1,  # encoder noise: none (no bound) | fixed | learned (init sigma0; needs y_weighting="elbo")
      standardize=True,  # batch-normalise each encoder output dim (running stats at eval): a spread latent
      l2_norm=False,  # per-slot L2 normalisation of y0 (to norm sqrt(d))
      corruption_max=0.0,  # p_r ~ U[0, corruption_max] per sequence (reference 0.9); 0 = off
      dropout=0.0,  # p_tau: fraction of examples trained with y_t = y0 = 0 (reference 0.15)
      kl_weight=0.0,  # lambda in lambda/2 ||y0||^2
      time_shift=1.0,  # a in t' = a t / (1 + (a - 1) t), applied to the latent time
      # joint schedule: c in [0, 1), the latent leads the tokens, t_y = time_shift(max((u - c) /
      # (1 - c), eps)): clean (at its path's end) from u = c on, while most tokens are masked
      lead=0.0,
      w_x=1.0, w_y=1.0,
      y_weighting="unweighted",  # L_y weighting: unweighted | elbo
      gaussian_schedule="sqrt",  # g(t): sqrt (sqrt(1-t)) | linear (1-t) | cosine | square (1-t^2)
      denoiser_layers=2, denoiser_d_model=64, denoiser_heads=2,  # g_psi (Co sequential)
      codebook_size=32, commitment=0.25, codebook_decay=0.99,  # Di: K, beta, EMA decay
      code_schedule="linear",  # Di codes: linear | polynomial (1 - t^2)
      independent_times=False,  # draw t_y independently of t_x
      stage="both",  # both | tokens (stage 1: encoder + token denoiser) | latent (stage 2)
      freeze_encoder=False,  # stage 2: no gradient into the encoder
      condition_ty=True,  # add emb(t_y) to the conditioning (emb(t_x): model.time_conditioning)
  )
  # VADD / VMD (method.md §3, §4): Gaussian latent z through adaLN, recognition model r/q(z | ...).
  c.vae = dict(
      latent_dim=8,
      recognition_d_model=64, recognition_layers=1, recognition_heads=2,
      kl_anneal_steps=0,  # lambda rises linearly 0 -> 1 over this many steps; 0 = always 1
      importance_samples=1,  # VADD nelbo: z samples per t for the importance-weighted bound
      vmd_posterior="x0_xt",  # VMD q(z | x0, x_t) | "x0": q(z | x0), a strict bound
      vmd_decoding="sample",  # VMD token choice at each step: sample | argmax
  )
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sample = dict(steps=128, num_samples=8, temperature=1.0, final_fill="sample", cache=True, seed=0,
                  latent_steps=0, latent_sampler="ddim",  # LADD: N_y (0 = steps); ddim | ancestral
                  top_k=0, top_p=1.0,  # 0 / 1.0: no truncation
                  noise_bits=32,  # random bits per Gumbel draw: 32 (float32 uniform) | 64 (tail to ~45)
                  latent_init="prior",  # latent drawn before the tokens: prior | encoder (LADD) | resample (VMD)
                  latent_candidates=16)  # resample: prior draws weighed by the clamped tokens' likelihood
  c.eval = dict(num_batches=0, t_samples=1, seed=0,  # num_batches 0 = the whole held-out split
                exact_samples=20000, exact_bins=32,  # exact-joint sources: samples drawn, 2D metric bins
                sudoku_puzzles=128, sudoku_clues=36)  # sudoku: held-out puzzles solved, clues per puzzle
  return c


def make_tiny(c):
  """Shrinks a config in place to a seconds-long CPU run (the `:tiny` variants; tests)."""
  c.data.update(seq_len=32, batch_size=8, eval_batch_size=8)
  c.model.update(d_model=32, n_layers=1, n_heads=2, cond_dim=16)
  c.train.update(steps=4, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=2)
  c.sample.update(steps=4, num_samples=2)
  c.eval.update(num_batches=2)
  return c
