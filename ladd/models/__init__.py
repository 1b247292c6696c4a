"""Network code. The diffusion mathematics lives in ladd.diffusion, not here."""
