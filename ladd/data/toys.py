"""Toy sources whose whole joint distribution is known (method.md §5).

2D toys (VADD style): checkerboard, swiss roll and circles as points in [-4, 4]^2, each
coordinate quantised to B bins, so a sequence is the pair (bin of x, bin of y) of length 2
over B symbols. Their exact [B, B] histograms are integrated analytically (checkerboard) or
by midpoint quadrature over the curve parameter of a Gaussian-blurred curve (swiss roll,
circles: the blur is separable, so each bin is a product of two normal-CDF differences).

Dependency tasks (VMD style): copy (x2 = x1 with probability p, else uniform), parity
(the last bit is the XOR of the others), a mixture of C product distributions, and
product: independent positions, each with its own table (the mixture's C = 1). Mixture and
product marginals differ from position to position, which a position-blind denoiser cannot
reproduce from an all-MASK input; on product a one-step factorised sampler can be exact.

Samples come from the generative process itself (continuous points quantised, copy coins,
...), not from the table, so comparing sample frequencies with `exact.probs` checks both.
`Dataset.exact` is a `JointDistribution` (an ladd.data.exact.ExactDistribution): the table
`probs` of shape [V] * L, `log_prob`, `sample` (the generative process), `entropy`, and
which exact metrics suit it (Jensen-Shannon for 2D toys, KL and total variation for
dependency tasks; see ladd.exact_metrics).
"""

import dataclasses
import functools
from collections.abc import Callable

import grain
import numpy as np
from scipy.special import ndtr

from ladd.data.dataset import Dataset
from ladd.data.errors import DataError
from ladd.data.seeded import SeededSource

TRAIN_LENGTH = 2**24  # random access by index, so "infinite" costs nothing
EVAL_LENGTH = 4096
EXTENT = 4.0  # 2D points live in [-EXTENT, EXTENT]^2; outside points fall in the edge bins
QUADRATURE_POINTS = 8192
MAX_STATES = 2**22  # the joint table is held in memory
TOYS_2D = ("checkerboard", "swiss_roll", "circles")
DEPENDENCY_TASKS = ("copy", "parity", "mixture", "product")
TOYS = TOYS_2D + DEPENDENCY_TASKS

SWISS_ROLL_NOISE = 1.0 / 5  # sklearn make_swiss_roll(noise=1.0) scaled by 1/5 (FFJORD)
CIRCLE_RADII = (3.0, 1.5)  # sklearn make_circles(factor=0.5, noise=0.08) scaled by 3 (FFJORD)
CIRCLE_NOISE = 0.08 * 3


@dataclasses.dataclass(frozen=True, eq=False)
class JointDistribution:
  """The exact distribution of a toy source (Dataset.exact)."""
  probs: np.ndarray  # float64 [V] * L, sums to 1
  metrics: tuple[str, ...]  # the exact metrics that suit it: ("js",) or ("kl", "tv")
  draw: Callable[[np.random.Generator, int], np.ndarray]  # the generative process, not the table

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return self.draw(rng, n)

  def log_prob(self, x: np.ndarray) -> np.ndarray:
    """Exact log p(x) in nats for x [n, L]; -inf on impossible sequences."""
    with np.errstate(divide="ignore"):
      return np.log(self.probs[tuple(np.asarray(x).T)])

  def entropy(self) -> float:
    p = self.probs[self.probs > 0]
    return float(-(p * np.log(p)).sum())


# --- 2D toys: continuous generators, quantisation and exact histograms -------------

def quantise(points: np.ndarray, bins: int) -> np.ndarray:
  """[n, 2] points -> int32 [n, 2] bin ids; points outside [-4, 4] go to the edge bins."""
  ids = np.floor((points + EXTENT) / (2 * EXTENT) * bins)
  return np.clip(ids, 0, bins - 1).astype(np.int32)


def checkerboard_points(rng: np.random.Generator, n: int) -> np.ndarray:
  """FFJORD's checkerboard: uniform on the 8 squares of side 2 with even floor(x/2)+floor(y/2)."""
  x = rng.random(n) * 4 - 2
  y = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x) % 2
  return np.stack([x, y], 1) * 2


def swiss_roll_points(rng: np.random.Generator, n: int) -> np.ndarray:
  t = 1.5 * np.pi * (1 + 2 * rng.random(n))
  return np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5 + SWISS_ROLL_NOISE * rng.standard_normal((n, 2))


def circles_points(rng: np.random.Generator, n: int) -> np.ndarray:
  radius = np.asarray(CIRCLE_RADII)[rng.integers(0, 2, n)]
  angle = 2 * np.pi * rng.random(n)
  centre = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
  return centre + CIRCLE_NOISE * rng.standard_normal((n, 2))


def bin_edges(bins: int) -> np.ndarray:
  return np.linspace(-EXTENT, EXTENT, bins + 1)


def checkerboard_histogram(bins: int) -> np.ndarray:
  """Exact bin masses: density 1/32 on each filled 2x2 square, integrated over each bin."""
  edges = bin_edges(bins)
  squares = np.arange(-4.0, 4.0, 2.0)  # lower corners of the 4 x 4 grid of squares

  def overlap(lo):  # [bins] length of each bin inside [lo, lo + 2]
    return np.clip(np.minimum(edges[1:], lo + 2) - np.maximum(edges[:-1], lo), 0, None)

  hist = np.zeros((bins, bins))
  for i, x_lo in enumerate(squares):
    for j, y_lo in enumerate(squares):
      if (i + j) % 2 == 0:
        hist += np.outer(overlap(x_lo), overlap(y_lo)) / 32
  return hist


def blurred_curve_histogram(centres: np.ndarray, noise: float, bins: int) -> np.ndarray:
  """Bin masses of the equal-weight mixture of N(centre, noise^2 I) over `centres` [n, 2].

  The edge bins extend to infinity, matching `quantise`.
  """
  edges = bin_edges(bins)
  edges[0], edges[-1] = -np.inf, np.inf
  cdf_x = ndtr((edges[None, :] - centres[:, :1]) / noise)
  cdf_y = ndtr((edges[None, :] - centres[:, 1:]) / noise)
  return np.diff(cdf_x, axis=1).T @ np.diff(cdf_y, axis=1) / len(centres)


def swiss_roll_histogram(bins: int) -> np.ndarray:
  t = 1.5 * np.pi * (1 + 2 * (np.arange(QUADRATURE_POINTS) + 0.5) / QUADRATURE_POINTS)
  centres = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5
  return blurred_curve_histogram(centres, SWISS_ROLL_NOISE, bins)


def circles_histogram(bins: int) -> np.ndarray:
  angle = 2 * np.pi * (np.arange(QUADRATURE_POINTS // 2) + 0.5) / (QUADRATURE_POINTS // 2)
  unit = np.stack([np.cos(angle), np.sin(angle)], 1)
  centres = np.concatenate([r * unit for r in CIRCLE_RADII])
  return blurred_curve_histogram(centres, CIRCLE_NOISE, bins)


_POINTS = {"checkerboard": checkerboard_points, "swiss_roll": swiss_roll_points,
           "circles": circles_points}
_HISTOGRAMS = {"checkerboard": checkerboard_histogram, "swiss_roll": swiss_roll_histogram,
               "circles": circles_histogram}


def draw_2d(name: str, bins: int, rng: np.random.Generator, n: int) -> np.ndarray:
  return quantise(_POINTS[name](rng, n), bins)


# --- dependency tasks ---------------------------------------------------------------

def draw_copy(vocab: int, p: float, rng: np.random.Generator, n: int) -> np.ndarray:
  first = rng.integers(0, vocab, n)
  second = np.where(rng.random(n) < p, first, rng.integers(0, vocab, n))
  return np.stack([first, second], 1).astype(np.int32)


def copy_table(vocab: int, p: float) -> np.ndarray:
  return (p * np.eye(vocab) + (1 - p) / vocab) / vocab


def draw_parity(length: int, rng: np.random.Generator, n: int) -> np.ndarray:
  bits = rng.integers(0, 2, (n, length - 1))
  return np.concatenate([bits, bits.sum(1, keepdims=True) % 2], 1).astype(np.int32)


def parity_table(length: int) -> np.ndarray:
  ones = np.indices((2,) * length).sum(0)
  return np.where(ones % 2 == 0, 2.0 ** (1 - length), 0.0)


def mixture_components(components: int, length: int, vocab: int, seed: int) -> np.ndarray:
  """[C, L, V] per-position distributions of each component; weights are uniform 1/C."""
  return np.random.default_rng(seed).dirichlet(np.full(vocab, 0.5), (components, length))


def draw_mixture(probs: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
  component = probs[rng.integers(0, len(probs), n)]  # [n, L, V]
  cdf = np.cumsum(component, -1)
  return np.minimum((rng.random(cdf.shape[:2])[..., None] > cdf).sum(-1), probs.shape[-1] - 1).astype(np.int32)


def mixture_table(probs: np.ndarray) -> np.ndarray:
  table = 0.0
  for component in probs:
    table = table + functools.reduce(np.multiply.outer, component) / len(probs)
  return table


# --- the source and the Dataset -----------------------------------------------------


def _needs(condition: bool, message: str) -> None:
  if not condition:
    raise DataError(message)


def toy_task(cfg) -> tuple[int, JointDistribution]:
  """(vocab size, exact distribution) of data.source = cfg.source."""
  name, length = cfg.source, cfg.seq_len
  if name in TOYS_2D:
    _needs(length == 2, f"data.source={name!r} makes (x, y) pairs: set data.seq_len=2")
    _needs(cfg.toy_bins >= 2, f"data.toy_bins must be >= 2, got {cfg.toy_bins}")
    return cfg.toy_bins, JointDistribution(_HISTOGRAMS[name](cfg.toy_bins), ("js",),
                                           functools.partial(draw_2d, name, cfg.toy_bins))
  if name == "copy":
    _needs(length == 2, "data.source='copy' makes pairs: set data.seq_len=2")
    _needs(0 <= cfg.copy_prob <= 1 and cfg.toy_vocab >= 2,
           f"copy needs 0 <= data.copy_prob <= 1 and data.toy_vocab >= 2, got {cfg.copy_prob}, {cfg.toy_vocab}")
    return cfg.toy_vocab, JointDistribution(copy_table(cfg.toy_vocab, cfg.copy_prob), ("kl", "tv"),
                                            functools.partial(draw_copy, cfg.toy_vocab, cfg.copy_prob))
  if name == "parity":
    _needs(2 <= length and 2**length <= MAX_STATES, f"parity needs 2 <= data.seq_len <= 22, got {length}")
    return 2, JointDistribution(parity_table(length), ("kl", "tv"), functools.partial(draw_parity, length))
  components = 1 if name == "product" else cfg.mixture_components
  _needs(cfg.toy_vocab >= 2 and components >= 1 and cfg.toy_vocab**length <= MAX_STATES,
         f"{name} needs data.toy_vocab >= 2, data.mixture_components >= 1 and toy_vocab**seq_len"
         f" <= {MAX_STATES}, got {cfg.toy_vocab}, {components}, seq_len {length}")
  probs = mixture_components(components, length, cfg.toy_vocab, cfg.mixture_seed)
  return cfg.toy_vocab, JointDistribution(mixture_table(probs), ("kl", "tv"), functools.partial(draw_mixture, probs))


def toy_dataset(cfg, workdir) -> Dataset:
  del workdir  # generated on the fly, nothing to cache
  vocab_size, exact = toy_task(cfg)

  def split(split_id: int, num_examples: int) -> grain.MapDataset:
    return grain.MapDataset.source(SeededSource(exact.sample, cfg.shuffle_seed, split_id, num_examples))

  return Dataset(
      vocab_size=vocab_size, seq_len=cfg.seq_len,
      train_examples=split(0, TRAIN_LENGTH), eval_examples=split(1, EVAL_LENGTH),
      shuffle_seed=cfg.shuffle_seed, num_workers=cfg.num_workers, exact=exact, mask_symbol="_")
