"""Masked-diffusion mathematics as small pure functions of arrays (method.md §1)."""
