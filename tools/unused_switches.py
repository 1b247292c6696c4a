"""Config keys that the code reads but no config, test or experiment sets.

  python -m tools.unused_switches

A key of ladd/config.py counts as read when ladd/ (outside config.py) mentions `.key` or
`"key"`, and as set when a file under configs/, tests/ or experiments/ assigns it
(`key=` in an update(...) or dict, `.key = `) or passes `--config.section.key`. Names are
matched without their section, so a key shares "set" with any same-named key elsewhere:
the list is a lower bound. A switch on it has nothing that shows what it does.
"""

import pathlib
import re

from ladd.config import default_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETTERS = ("configs", "tests", "experiments")


def config_keys(config, prefix=""):
  for name, value in config.items():
    if hasattr(value, "items"):
      yield from config_keys(value, f"{prefix}{name}.")
    else:
      yield prefix + name


def texts(*folders):
  return "\n".join(path.read_text() for folder in folders for path in sorted((ROOT / folder).rglob("*.py")))


def unused_switches():
  code = "\n".join(path.read_text() for path in sorted((ROOT / "ladd").rglob("*.py")) if path.name != "config.py")
  setters = texts(*SETTERS)
  out = []
  for key in config_keys(default_config()):
    name = key.rsplit(".", 1)[-1]
    read = re.search(rf"\.{name}\b|[\"']{name}[\"']", code)
    set_ = re.search(rf"(?<![\w.])(?:\w+\.)*{name}\s*=(?!=)|config\.{re.escape(key)}\b", setters)
    if read and not set_:
      out.append(key)
  return out


def main():
  keys = unused_switches()
  print(f"{len(keys)} keys read by ladd/ but set by nothing in {', '.join(SETTERS)}:")
  for key in keys:
    print(" ", key)


if __name__ == "__main__":
  main()
