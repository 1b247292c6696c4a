"""Sudoku as a data source: 81 tokens per board, row by row, digit d in 1..9 is id d - 1.

The model trains on complete solutions only. A puzzle is an int32 [81] array holding the
clue ids and BLANK (-1, = ladd.diffusion.sampling.FREE) at the cells to fill, so a puzzle
is itself the `clamped` array of a sampler: clues are clamped, blanks generated, and
`solved` checks the result exactly.

Solutions: a per-split pool of grids made by randomised backtracking (numpy-seeded), each
example a random validity-preserving transform of a pool grid (digit relabelling, row
swaps within a band, band swaps, the same for columns, transposition: 9! 6^8 2 ~ 1.2e12
transforms of each grid). Train and eval pools come from different seeds, so held-out
boards are (almost surely) not transforms of training grids. Puzzles: clues removed from
a solution in random order while the solution stays unique, down to `clues`.
"""

import numpy as np

from ladd.data.errors import DataError

SIZE, CELLS, DIGITS = 9, 81, "123456789"
BLANK = -1
TRAIN_LENGTH = 2**24
EVAL_LENGTH = 4096
_ROW, _COL = np.divmod(np.arange(CELLS), SIZE)
_BOX = (_ROW // 3) * 3 + _COL // 3
_UNITS = np.concatenate([np.arange(CELLS).reshape(9, 9), np.arange(CELLS).reshape(9, 9).T,
                         np.arange(CELLS).reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)])
_PEERS = [np.flatnonzero((_ROW == _ROW[i]) | (_COL == _COL[i]) | (_BOX == _BOX[i])) for i in range(CELLS)]
_POPCOUNT = [bin(m).count("1") for m in range(1 << SIZE)]
_ALL = (1 << SIZE) - 1


class DigitTokenizer:
  """Digits 1..9 <-> ids 0..8 (so `--infill` templates are puzzles: '_' is a blank)."""
  kind = "digits"
  vocab_size = SIZE

  def encode(self, text: str) -> np.ndarray:
    bad = sorted(set(text) - set(DIGITS))
    if bad:
      raise DataError(f"{', '.join(map(repr, bad))} is not a Sudoku digit 1-9")
    return np.array([DIGITS.index(c) for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(DIGITS[i] for i in np.asarray(ids).reshape(-1))


def is_valid(boards: np.ndarray) -> np.ndarray:
  """bool [N]: every row, column and box of each [81] board holds each id 0..8 once."""
  boards = np.asarray(boards).reshape(-1, CELLS)
  units = np.sort(boards[:, _UNITS], axis=-1)
  return np.all(units == np.arange(SIZE), axis=(1, 2))


def solved(boards: np.ndarray, puzzles: np.ndarray) -> np.ndarray:
  """bool [N]: the board is a valid solution that keeps every clue of its puzzle."""
  boards, puzzles = np.asarray(boards).reshape(-1, CELLS), np.asarray(puzzles).reshape(-1, CELLS)
  keeps_clues = np.all((puzzles == BLANK) | (boards == puzzles), axis=-1)
  return is_valid(boards) & keeps_clues


def count_solutions(puzzle, limit: int = 2) -> int:
  """Number of completions of a puzzle ([81], BLANK at blanks), counting stops at `limit`.
  Depth-first search on row/column/box bitmasks, always branching on the most
  constrained blank."""
  cells = [int(v) for v in np.asarray(puzzle).reshape(-1)]
  used = [[0] * SIZE for _ in range(3)]  # rows, columns, boxes
  for i, v in enumerate(cells):
    if v != BLANK:
      bit, places = 1 << v, (_ROW[i], _COL[i], _BOX[i])
      if any(used[k][p] & bit for k, p in enumerate(places)):
        return 0
      for k, p in enumerate(places):
        used[k][p] |= bit
  blanks = [(i, _ROW[i], _COL[i], _BOX[i]) for i, v in enumerate(cells) if v == BLANK]
  rows, cols, boxes = used

  def search(open_cells):
    if not open_cells:
      return 1
    best, best_free, best_count = None, 0, SIZE + 1
    for cell in open_cells:
      _, r, c, b = cell
      free = _ALL & ~(rows[r] | cols[c] | boxes[b])
      count = _POPCOUNT[free]
      if count < best_count:
        best, best_free, best_count = cell, free, count
        if count <= 1:
          break
    if best_count == 0:
      return 0
    rest = [cell for cell in open_cells if cell is not best]
    _, r, c, b = best
    total = 0
    while best_free and total < limit:
      bit = best_free & -best_free
      best_free ^= bit
      rows[r] |= bit
      cols[c] |= bit
      boxes[b] |= bit
      total += search(rest)
      rows[r] ^= bit
      cols[c] ^= bit
      boxes[b] ^= bit
    return total

  return min(search(blanks), limit)


def random_grid(rng: np.random.Generator) -> np.ndarray:
  """One complete grid by randomised backtracking, int32 [81] of ids 0..8."""
  grid = np.full(CELLS, BLANK, np.int32)
  order = [rng.permutation(SIZE) for _ in range(CELLS)]

  def fill(i):
    if i == CELLS:
      return True
    taken = set(grid[_PEERS[i]].tolist())
    for v in order[i]:
      if v not in taken:
        grid[i] = v
        if fill(i + 1):
          return True
    grid[i] = BLANK
    return False

  fill(0)
  return grid


def grid_pool(seed: int, split_id: int, size: int) -> np.ndarray:
  rng = np.random.default_rng([seed, split_id, 7])
  return np.stack([random_grid(rng) for _ in range(size)])


def transformed(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
  """A random validity-preserving transform of one [81] grid."""
  def lines():  # a permutation of 0..8 that keeps each band of 3 together
    bands = rng.permutation(3)
    return np.concatenate([3 * b + rng.permutation(3) for b in bands])

  board = grid.reshape(SIZE, SIZE)[lines()][:, lines()]
  if rng.random() < 0.5:
    board = board.T
  return rng.permutation(SIZE).astype(np.int32)[board].reshape(CELLS)


def make_puzzle(rng: np.random.Generator, solution: np.ndarray, clues: int) -> np.ndarray:
  """Blanks cells of `solution` in random order while it stays the unique completion, until
  `clues` clues remain (or no clue can go)."""
  puzzle = np.array(solution, np.int32)
  for cell in rng.permutation(CELLS):
    if np.sum(puzzle != BLANK) <= clues:
      break
    kept = puzzle[cell]
    puzzle[cell] = BLANK
    if count_solutions(puzzle) != 1:
      puzzle[cell] = kept
  return puzzle


def check_clues(clues: int):
  if not 17 <= clues <= CELLS:
    raise DataError(f"a Sudoku with a unique solution has 17..81 clues, got {clues}")


def puzzles(seed: int, count: int, clues: int, pool_size: int = 64):
  """(puzzles, solutions), int32 [count, 81] each, from the eval pool: deterministic in
  `seed`. Puzzle i uses its own random stream."""
  check_clues(clues)
  pool = grid_pool(seed, 1, pool_size)
  solutions, boards = [], []
  for i in range(count):
    rng = np.random.default_rng([seed, 2, i])
    solution = transformed(rng, pool[rng.integers(pool_size)])
    solutions.append(solution)
    boards.append(make_puzzle(rng, solution, clues))
  return np.stack(boards), np.stack(solutions)


class SolutionSource:
  """Random-access complete boards: example i is a seeded transform of a pool grid."""

  def __init__(self, seed: int, split_id: int, num_examples: int, pool_size: int):
    self.pool = grid_pool(seed, split_id, pool_size)
    self.seed, self.split_id, self.num_examples = seed, split_id, num_examples

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, self.split_id, int(index)])
    return transformed(rng, self.pool[rng.integers(len(self.pool))])
