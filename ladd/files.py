"""Files in work directories on any file system etils.epath reaches: local paths, gs://
and its other URL schemes (Orbax writes checkpoints to the same places).

Object stores have no append, no atomic rename and no memory maps, but an object appears
whole when its upload completes; so on them a whole file is written in one upload, and
appending rewrites it. Local files keep temporary-file-then-rename writes and real appends.
Entry points write shared files from process 0 only.
"""

import atexit
import io
import os
import shutil
import tempfile

import numpy as np
from etils import epath


# The schemes both etils.epath (ladd's files, tensorboardX's events) and TensorStore (Orbax's
# arrays) write to.
REMOTE_SCHEMES = ("gs", "s3")


def is_local(path) -> bool:
  return "://" not in str(path)


def resolve(path) -> str:
  """A local path made absolute (what Orbax needs), or a URL as given (no trailing /)."""
  return os.path.abspath(path) if is_local(path) else str(path).rstrip("/")


def make_workdir(path) -> None:
  """Creates a local work directory; on an object store checks that its bucket exists
  (one clear error, instead of a bucket created by the first write or a late failure)."""
  if is_local(path):
    os.makedirs(path, exist_ok=True)
    return
  scheme, rest = str(path).split("://", 1)
  if scheme not in REMOTE_SCHEMES:
    raise ValueError(f"work directory {path}: use a local path or {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
  bucket = f"{scheme}://{rest.split('/', 1)[0]}"
  try:
    found = epath.Path(bucket).exists()
  except ImportError as e:
    raise ValueError(f"work directory {path}: {scheme}:// needs its file system package ({e});"
                     " for gs:// pip install 'ladd[gcs]'") from e
  except OSError as e:  # after the client's retries
    raise OSError(f"work directory {path}: cannot reach {bucket}: {e}") from e
  if not found:
    raise FileNotFoundError(f"work directory {path}: bucket {bucket} does not exist or cannot be reached")


def write_text(path, text: str) -> None:
  """Writes `path` so that no reader (another process, a crash) sees half of it."""
  path = epath.Path(path)
  if not is_local(path):
    path.write_text(text, encoding="utf-8")  # an object appears whole
    return
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes may share a work directory
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def open_append(path):
  """A text file to append to: the file itself where it is local, otherwise the object's
  text that every flush (and close) uploads whole."""
  return open(path, "a") if is_local(path) else _RewrittenObject(epath.Path(path))


class _RewrittenObject:

  def __init__(self, path):
    self.path = path
    self.text = path.read_text() if path.exists() else ""

  def write(self, text):
    self.text += text

  def writelines(self, lines):
    self.text += "".join(lines)

  def flush(self):
    self.path.write_text(self.text)

  def close(self):
    self.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def save_figure(fig, path, **savefig_args) -> None:
  """A matplotlib figure to a PNG file, local or not."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", **savefig_args)
  epath.Path(path).write_bytes(buffer.getvalue())


def save_npy(path, array) -> None:
  """An array to a whole .npy object (local token streams are written in pieces instead)."""
  buffer = io.BytesIO()
  np.save(buffer, array)
  epath.Path(path).write_bytes(buffer.getvalue())


def load_npy(path) -> np.ndarray:
  """A .npy file: memory-mapped where it is local, read whole from an object store."""
  if is_local(path):
    return np.load(path, mmap_mode="r")
  return np.load(io.BytesIO(epath.Path(path).read_bytes()))


def upload(local_file, path) -> None:
  """Moves a finished local file to `path`: a rename where it is local, otherwise one
  streamed upload (the object appears whole when it completes)."""
  if is_local(path):
    os.replace(local_file, path)
    return
  with open(local_file, "rb") as source, epath.Path(path).open("wb") as target:
    shutil.copyfileobj(source, target, 1 << 24)
  os.remove(local_file)


def files_under(directory) -> list[epath.Path]:
  """Every file under `directory`, at any depth (links to directories are not followed),
  sorted component by component as pathlib sorts paths; one listing per directory."""
  directory = epath.Path(directory)
  found, top = [], None
  for parent, _, names in directory.walk():
    # file systems name the directories they walk their own way (fsspec drops gs://), but
    # the first one is `directory` itself
    top = str(parent) if top is None else top
    relative = os.path.relpath(str(parent), top)
    parts = () if relative == "." else tuple(relative.split("/"))
    found += [(*parts, name) for name in names]
  return [directory.joinpath(*parts) for parts in sorted(found)]


def upload_tree(local_directory, url) -> None:
  """Moves every file under a local directory to the same place under the object-store
  `url` (see upload; an object store needs no parent directories made)."""
  for file in files_under(local_directory):
    upload(file, epath.Path(url) / os.path.relpath(file, local_directory))


def local_copies(paths) -> list[str]:
  """Local files with the contents of `paths`: local ones as they are; the others
  downloaded whole, once, into a temporary directory removed when the process exits.

  ArrayRecord's reader opens local files only (given a gs:// path here it hangs), so
  prepared shards in a bucket are copied to each host's disk before training reads them:
  the whole split lands on local disk (OpenWebText's ~9B GPT-2 tokens are ~36 GB) and
  the copy takes its download time at start-up, but reading is then at disk speed,
  random access, with no memory cost and no dependence on the bucket during training."""
  paths = [str(p) for p in paths]
  if all(is_local(p) for p in paths):
    return paths
  directory = tempfile.mkdtemp(prefix="ladd-shards-")
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  copies = []
  for i, path in enumerate(paths):
    if is_local(path):
      copies.append(path)
      continue
    copy = os.path.join(directory, f"{i:05d}-{path.rsplit('/', 1)[-1]}")
    with epath.Path(path).open("rb") as source, open(copy, "wb") as target:
      shutil.copyfileobj(source, target, 1 << 24)
    copies.append(copy)
  return copies
