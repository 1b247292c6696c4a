"""LADD on the Shakespeare plays (character level): variants as configs/ladd_binsaw.py
(`co_joint`, `co_seq`, `di_joint`, `di_seq`, each with `_tiny`), with 8 latent slots."""

from configs import ladd_binsaw, shakespeare

VARIANTS = ladd_binsaw.VARIANTS


def get_config(variant="co_joint"):
  tiny = variant.endswith("_tiny")
  c = ladd_binsaw.apply_ladd(shakespeare.get_config("tiny" if tiny else ""), variant, "shakespeare")
  c.latent.update(slots=2 if tiny else 8, encoder_layers=1 if tiny else 2)
  return c
