"""Device mesh and logical-to-mesh sharding rules.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimiser state sharded), `tensor` (model parallel over heads / mlp / vocab).
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the mesh axes the batch dimension is split over

LOGICAL_RULES = (
    ("batch", BATCH),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("cond", None),
    ("latent", None),  # LADD latent vector dims d (small: replicated)
    ("codes", None),  # Di-LADD code ids (codebook size K + MASK)
    ("position", None),  # absolute position tables (short: replicated; their embed dim shards)
    ("mask_state", None),  # visible / masked (the VAE recognition model's input embedding)
    ("freq", "fsdp"),
    ("layers", None),  # the stacked-blocks axis of model.scan_layers: every device holds every layer
)


def resolve_mesh_shape(requested, num_devices):
  """Fills the one -1 entry so the product equals num_devices; one clear error otherwise."""
  requested = tuple(int(x) for x in requested)
  fills = [i for i, x in enumerate(requested) if x == -1]
  if len(fills) > 1 or any(x == 0 or x < -1 for x in requested):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, requested))}: use positive sizes and at most one -1")
  known = math.prod(x for x in requested if x != -1)
  if fills:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, requested))} cannot fill {num_devices} devices: {num_devices} is not divisible by {known}")
    return tuple(num_devices // known if x == -1 else x for x in requested)
  if known != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, requested))} needs {known} devices but {num_devices} are available")
  return requested


def make_mesh(mesh_cfg, devices=None):
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_divisor(mesh):
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _fit_spec(spec, shape, mesh):
  """Drops mesh axes from dimensions they do not divide (uneven shards are not allowed)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if size > 1 and dim % size == 0 else None)
  return P(*fitted)


def state_shardings(abstract_state, mesh):
  """NamedShardings for an nnx state (or a tree holding one) from its logical names."""
  with nnx.logical_axis_rules(LOGICAL_RULES):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
      nnx.to_pure_dict(specs) if isinstance(specs, nnx.State) else specs,
      nnx.to_pure_dict(abstract_state) if isinstance(abstract_state, nnx.State) else abstract_state,
      is_leaf=lambda x: isinstance(x, P))


def describe(mesh):
  return " x ".join(f"{name}={size}" for name, size in mesh.shape.items())


def global_batch(local_batch: np.ndarray, mesh):
  """Per-process batch -> one global array split over the batch axes."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def constrain_batch(x):
  """Pins an activation's leading (batch) axis to the batch mesh axes when a mesh is set.

  Without this the compiler may inherit the embedding table's layout for activations and
  fall back to full rematerialisation between layers.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH))


def on_mesh(mesh, jitted):
  """Calls (and so traces) a jitted function with `mesh` as the context mesh; `.trace(*args)`
  and `.lower(*args)` trace and lower it there (ahead-of-time compilation, ladd.aot)."""
  def in_mesh(fn):
    def run(*args):
      with jax.set_mesh(mesh):
        return fn(*args)
    return run
  call = in_mesh(jitted)
  call.trace, call.lower = in_mesh(jitted.trace), in_mesh(jitted.lower)
  return call
