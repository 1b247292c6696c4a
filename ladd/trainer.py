"""The functional train state, one jitted sharded train step, and held-out NELBO.

State is a plain pytree {step, params, model_state, opt_state, ema}. `params` are the
nnx.Param variables, `model_state` every other variable (e.g. an EMA codebook updated in
the forward pass; empty for MDLM), both as nnx pure dicts merged into the module inside
the jitted functions, so nothing walks the object graph per step.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ladd import sharding


def learning_rate_schedule(optim_cfg, total_steps):
  warmup = optax.linear_schedule(0.0, optim_cfg.lr, max(optim_cfg.warmup_steps, 1))
  if optim_cfg.decay == "constant":
    after = optax.constant_schedule(optim_cfg.lr)
  elif optim_cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(
        optim_cfg.lr, max(total_steps - optim_cfg.warmup_steps, 1), alpha=optim_cfg.min_lr_ratio)
  else:
    raise ValueError(f"optim.decay must be 'constant' or 'cosine', got {optim_cfg.decay!r}")
  return optax.join_schedules([warmup, after], [max(optim_cfg.warmup_steps, 1)])


def scale_submodules(lr_scales):
  """Multiplies the updates of the named top-level submodules (a per-module learning rate)."""
  def scaled(tree, factor):
    return jax.tree.map(lambda u: u * factor, tree)

  def scale(updates, params=None):
    del params
    return {name: scaled(sub, lr_scales.get(name, 1.0)) for name, sub in updates.items()}
  return optax.stateless(scale)


def make_optimizer(optim_cfg, total_steps, lr_scales=None):
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay),
      *([scale_submodules(lr_scales)] if lr_scales else []))
  return tx, schedule


@dataclasses.dataclass
class Evaluator:
  """What sampling and evaluation need for one (method, mesh): the model's structure, the
  abstract params / model_state / EMA with their shardings, and the eval step. No optimizer."""

  mesh: jax.sharding.Mesh
  graphdef: object
  state_shardings: dict
  abstract_state: dict
  eval_step: object


@dataclasses.dataclass
class Trainer(Evaluator):
  """An Evaluator with the optimizer: the full train state (step, opt_state too), init and
  the train step, compiled for one (config, mesh)."""

  init: object
  train_step: object


def split_model(model):
  """(graphdef, nnx.Param state, state of every other variable)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def build_evaluator(method, mesh):
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0)))
  graphdef, abstract_params, abstract_rest = split_model(abstract_model)
  param_shardings = sharding.state_shardings(abstract_params, mesh)
  model_state_shardings = sharding.state_shardings(abstract_rest, mesh)
  params, model_state = nnx.to_pure_dict(abstract_params), nnx.to_pure_dict(abstract_rest)
  pad_id = getattr(method, "pad_id", None)  # only methods that accept padded data have one

  def eval_step(params, model_state, batch, key):
    per_sequence = method.nelbo(nnx.merge(graphdef, params, model_state), batch, key)
    sums = {name: value.astype(jnp.float32).sum() for name, value in per_sequence.items()}
    tokens = batch.size if pad_id is None else jnp.sum(batch != pad_id)
    squares = jnp.square(per_sequence["nelbo"].astype(jnp.float32)).sum()  # for the estimate's standard error
    return dict(sums, nelbo_squares=squares, tokens=jnp.asarray(tokens, jnp.int32))

  return Evaluator(
      mesh=mesh, graphdef=graphdef,
      state_shardings={"params": param_shardings, "model_state": model_state_shardings, "ema": param_shardings},
      abstract_state={"params": params, "model_state": model_state, "ema": params},
      eval_step=sharding.on_mesh(mesh, jax.jit(
          eval_step, in_shardings=(param_shardings, model_state_shardings, sharding.batch_sharding(mesh),
                                   sharding.replicated(mesh)), out_shardings=sharding.replicated(mesh))))


def build_trainer(config, method, mesh):
  evaluator = build_evaluator(method, mesh)
  graphdef, param_shardings = evaluator.graphdef, evaluator.state_shardings["params"]
  tx, lr_schedule = make_optimizer(config.optim, config.train.steps, method.lr_scales)
  seed = config.seed
  ema_decay = config.optim.ema_decay
  skip_nonfinite = config.train.skip_nonfinite

  def init():
    with nnx.use_eager_sharding(False):
      model = method.init_model(nnx.Rngs(seed))
    _, params, rest = split_model(model)
    params = nnx.to_pure_dict(params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": nnx.to_pure_dict(rest),
            "opt_state": tx.init(params), "ema": params}

  abstract_state = jax.eval_shape(init)
  state_shardings = dict(
      evaluator.state_shardings, step=sharding.replicated(mesh),
      opt_state=optimizer_state_shardings(tx, abstract_state["opt_state"], param_shardings, mesh))

  def grads_and_metrics(params, model_state, x0, key, step):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, model_state)
      loss, metrics = method.loss(model, x0, key, step)
      return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, dict(metrics, loss=loss), model_state

  microbatches = config.train.microbatches

  def accumulated(params, model_state, batch, key, step):
    """Mean gradient and metrics over train.microbatches micro-batches, one lax.scan step each.

    Micro-batch i holds rows i, i + k, i + 2k, ... of the batch, so each device keeps its own
    rows (the batch is split over devices in contiguous blocks) and the data order is the
    plain step's; it draws its noise (t, masks) with key fold_in(key, i). A method draws noise
    for a whole batch at once (stratified t over its rows), so k micro-batches equal one batch
    of k x b exactly when that batch's loss is the mean of the k micro-batch losses under
    those keys (tests/test_training.py); model_state (an EMA codebook) absorbs them in turn.
    """
    if microbatches == 1:
      return grads_and_metrics(params, model_state, batch, key, step)
    groups = batch.reshape(-1, microbatches, batch.shape[-1]).swapaxes(0, 1)

    def body(carry, group):
      grads_sum, model_state = carry
      i, x0 = group
      grads, metrics, model_state = grads_and_metrics(
          params, model_state, sharding.constrain_batch(x0), jax.random.fold_in(key, i), step)
      return (jax.tree.map(jnp.add, grads_sum, grads), model_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads_sum, model_state), metrics = jax.lax.scan(body, (zeros, model_state), (jnp.arange(microbatches), groups))
    grads = jax.tree.map(lambda g: g / microbatches, grads_sum)
    return grads, jax.tree.map(lambda m: m.mean(0), metrics), model_state

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(seed), state["step"])
    grads, metrics, model_state = accumulated(state["params"], state["model_state"], batch, key, state["step"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    metrics = dict(metrics, grad_norm=grad_norm, lr=lr_schedule(state["step"]), finite=finite)
    new_state = {"params": params, "model_state": model_state, "opt_state": opt_state, "ema": ema}
    if skip_nonfinite:  # the step (and so the data and the noise) moves on; nothing else does
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                               {k: state[k] for k in new_state})
    return dict(new_state, step=state["step"] + 1), metrics

  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  return Trainer(
      mesh=mesh, graphdef=graphdef, state_shardings=state_shardings, abstract_state=abstract_state,
      eval_step=evaluator.eval_step,
      init=sharding.on_mesh(mesh, jax.jit(init, out_shardings=state_shardings)),
      train_step=sharding.on_mesh(mesh, jax.jit(
          train_step, in_shardings=(state_shardings, batch_sh),
          out_shardings=(state_shardings, rep), donate_argnums=0)))


def optimizer_state_shardings(tx, abstract_opt_state, param_shardings, mesh):
  """Adam moments follow their parameters; counts and other scalars are replicated."""
  return optax.tree_map_params(
      tx, lambda _, param_sharding: param_sharding, abstract_opt_state, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))


def evaluate_nelbo(trainer, params, model_state, batches, seed, t_samples=1):
  """Sum of per-sequence NELBO over held-out batches (each with t_samples draws of t).

  Returns a dict of float64 totals keyed like the method's nelbo output, plus
  `sequences` and `tokens` (padding excluded), and `draws` (sequences x t_samples) with
  `nelbo_squares`, the sum of every draw's squared per-sequence NELBO (ladd.summary turns
  them into the estimate's standard error).
  """
  totals, sequences, tokens, squares = {}, 0, 0, 0.0
  key = jax.random.key(seed)
  for i, local_batch in enumerate(batches):
    batch = sharding.global_batch(local_batch, trainer.mesh)
    for j in range(t_samples):
      sums = trainer.eval_step(params, model_state, batch, jax.random.fold_in(key, i * t_samples + j))
      batch_tokens = int(sums.pop("tokens"))  # padding is not counted
      squares += float(sums.pop("nelbo_squares"))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + float(value) / t_samples
    sequences += batch.shape[0]
    tokens += batch_tokens
  return dict(totals, sequences=sequences, tokens=tokens, draws=sequences * t_samples, nelbo_squares=squares)
