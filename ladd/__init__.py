"""ladd: latent-augmented masked discrete diffusion in JAX/Flax."""

__version__ = "0.1.0"
