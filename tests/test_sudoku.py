"""The Sudoku source: unique-solution puzzles, an exact checker, boards as 81 tokens."""

import numpy as np
import pytest

from configs import sudoku as sudoku_configs
from ladd.data import sudoku
from ladd.data.build import build_dataset
from ladd.data.errors import DataError
from ladd.diffusion.sampling import FREE
from ladd.evaluation import solve_metrics, sudoku_report
from ladd.job import load_trained
from ladd.train_loop import train


@pytest.fixture(scope="module")
def generated():
  return sudoku.puzzles(seed=3, count=12, clues=28, pool_size=4)


def test_puzzles_have_one_solution_which_is_valid_and_keeps_the_clues(generated):
  puzzles, solutions = generated
  assert sudoku.BLANK == FREE  # a puzzle is the sampler's clamp array as it is
  assert sudoku.is_valid(solutions).all() and sudoku.solved(solutions, puzzles).all()
  assert ((puzzles != sudoku.BLANK).sum(1) == 28).all()
  assert all(sudoku.count_solutions(p) == 1 for p in puzzles)
  clues = puzzles != sudoku.BLANK
  np.testing.assert_array_equal(puzzles[clues], solutions[clues])
  again, _ = sudoku.puzzles(seed=3, count=2, clues=28, pool_size=4)
  np.testing.assert_array_equal(again, puzzles[:2])


def deadly_rectangle(board):
  """Cells (r1, c1), (r1, c2), (r2, c1), (r2, c2) holding a b / b a, rows in one band and
  columns in two boxes: blanking them leaves exactly two completions."""
  g = board.reshape(9, 9)
  for r1 in range(9):
    for r2 in range(r1 + 1, 3 * (r1 // 3) + 3):
      for c1 in range(9):
        for c2 in range(3 * (c1 // 3) + 3, 9):
          if g[r1, c1] == g[r2, c2] and g[r1, c2] == g[r2, c1]:
            return [9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2]
  return None


def test_solution_counting_known_answers(generated):
  _, solutions = generated
  grid = solutions[0].copy()
  assert sudoku.count_solutions(grid) == 1
  assert sudoku.count_solutions(np.full(81, sudoku.BLANK)) == 2  # stops at the limit
  assert sudoku.count_solutions(np.full(81, sudoku.BLANK), limit=5) == 5
  holes = grid.copy()
  holes[[0, 1, 2, 40]] = sudoku.BLANK
  assert sudoku.count_solutions(holes) == 1
  conflicting = grid.copy()
  conflicting[1] = conflicting[0]  # two equal digits in row 0
  assert sudoku.count_solutions(conflicting) == 0
  cells = next(c for c in map(deadly_rectangle, solutions) if c is not None)
  board = next(b for b in solutions if deadly_rectangle(b) == cells).copy()
  board[cells] = sudoku.BLANK
  assert sudoku.count_solutions(board, limit=5) == 2


def test_checker_rejects_invalid_boards(generated):
  puzzles, solutions = generated
  board = solutions[0]
  swapped = board.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the row still holds 1..9, two columns do not
  repeated = board.copy()
  repeated[40] = (repeated[40] + 1) % 9
  assert not sudoku.is_valid(np.stack([swapped, repeated, np.zeros(81, int)])).any()
  other = solutions[1]  # a valid board that is not the solution of puzzle 0
  assert sudoku.is_valid(other)[0] and not sudoku.solved(other, puzzles[0])[0]
  relabelled = (board + 1) % 9  # valid, but breaks every clue
  assert sudoku.is_valid(relabelled)[0] and not sudoku.solved(relabelled, puzzles[0])[0]


def test_sudoku_source_builds_valid_boards_as_81_digit_tokens():
  config = sudoku_configs.get_config("mdlm_tiny")
  dataset = build_dataset(config.data, None)
  assert (dataset.vocab_size, dataset.seq_len) == (9, 81)
  boards = np.stack([dataset.train_examples[i] for i in range(64)] + [dataset.eval_examples[i] for i in range(64)])
  assert sudoku.is_valid(boards).all() and len(np.unique(boards, axis=0)) == 128
  np.testing.assert_array_equal(dataset.train_examples[5], dataset.train_examples[5])
  text = dataset.decode(boards[0])
  assert len(text) == 81 and set(text) <= set("123456789")
  np.testing.assert_array_equal(dataset.tokenizer.encode(text), boards[0])
  assert dataset.decode(np.where(np.arange(81) < 3, 9, boards[0]))[:4] == "___" + text[3]
  with pytest.raises(DataError, match="not a Sudoku digit"):
    dataset.tokenizer.encode("12a")
  config.data.seq_len = 32
  with pytest.raises(DataError, match="seq_len = 81"):
    build_dataset(config.data, None)
  with pytest.raises(DataError, match="17..81"):
    sudoku.puzzles(0, 1, clues=10)


def numpy_solved(board, puzzle):
  """Independent of sudoku.solved: each row, column and box holds nine distinct digits, and
  every clue is kept."""
  g = board.reshape(9, 9)
  units = [g[r] for r in range(9)] + [g[:, c] for c in range(9)] + \
          [g[r:r + 3, c:c + 3].ravel() for r in range(0, 9, 3) for c in range(0, 9, 3)]
  return all(len(set(u.tolist())) == 9 for u in units) and bool(np.all((puzzle == -1) | (board == puzzle)))


def test_solve_metrics_known_answers(generated):
  puzzles, solutions = generated
  assert solve_metrics(solutions, puzzles, solutions) == {"sudoku_solved": 1.0, "sudoku_valid": 1.0, "sudoku_cells_correct": 1.0}
  wrong = solutions[:3].copy()
  wrong[:, 0] = (wrong[:, 0] + 1) % 9  # broken at one cell
  relabelled = (solutions[3:6] + 1) % 9  # valid grids, every digit (clue or not) wrong
  metrics = solve_metrics(np.concatenate([wrong, relabelled]), puzzles[:6], solutions[:6])
  assert metrics["sudoku_solved"] == 0.0 and metrics["sudoku_valid"] == 0.5
  blanks = puzzles[:6] == sudoku.BLANK
  right = blanks[:3].sum() - blanks[:3, 0].sum()  # the broken boards' blanks but cell 0
  assert metrics["sudoku_cells_correct"] == pytest.approx(right / blanks.sum())


def test_evaluate_reports_the_solve_rate_of_clamped_held_out_puzzles(tmp_path):
  config = sudoku_configs.get_config("vmd_tiny")
  train(config, str(tmp_path))
  job, _, params, model_state = load_trained(str(tmp_path))
  report, boards = sudoku_report(job, params, model_state, [2, 3], count=12, clues=60, latent_init="resample",
                                 latent_candidates=2)
  puzzles, solutions = sudoku.puzzles(config.data.shuffle_seed, 12, 60, config.data.sudoku_pool)
  assert (report["puzzles"], report["clues"]) == (12, 60) and set(report["by_steps"]) == {2, 3}
  for steps, metrics in report["by_steps"].items():
    rows = boards[steps]
    clues = puzzles != sudoku.BLANK
    np.testing.assert_array_equal(rows[clues], puzzles[clues])  # clues are never changed
    assert metrics["sudoku_solved"] == np.mean([numpy_solved(b, p) for b, p in zip(rows, puzzles)])
    assert metrics["sudoku_valid"] == np.mean([numpy_solved(b, np.full(81, -1)) for b in rows])
    assert metrics["sudoku_cells_correct"] == pytest.approx((rows == solutions)[~clues].mean())
    used = metrics["sampler"]
    assert (used["steps"], used["latent_init"], used["latent_candidates"]) == (steps, "resample", 2)
    assert 2 < used["nfe"] <= steps + 1 + 2  # the K = 2 candidate calls, then at most one call per step and the fill
