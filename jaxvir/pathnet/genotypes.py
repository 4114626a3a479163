"""PathNet genotypes: L x N integer matrices of active module indices, one individual each.

The operators act on one genotype and are vmapped over a population by the caller.

Example:

  >>> genotype = random_genotype(jax.random.key(0), num_layers=3, num_active=3, num_modules=10)
  >>> weights = module_weights(genotype, num_modules=10, aggregation="mean")  # (3, 10)
  >>> child = mutate(jax.random.key(1), genotype, num_modules=10, rate=1 / 9)
"""

import jax
import jax.numpy as jnp


def random_genotype(
  key: jax.Array, *, num_layers: int, num_active: int, num_modules: int
) -> jax.Array:
  """A uniformly random (num_layers, num_active) int32 genotype with values in [0, M-1]."""
  return jax.random.randint(key, (num_layers, num_active), 0, num_modules, jnp.int32)


def module_mask(genotype: jax.Array, *, num_modules: int) -> jax.Array:
  """(L, M) float32 1.0 where a module is active; a repeated index counts once."""
  hits = genotype[..., :, None] == jnp.arange(num_modules)
  return jnp.any(hits, axis=-2).astype(jnp.float32)


def module_weights(genotype: jax.Array, *, num_modules: int, aggregation: str) -> jax.Array:
  """(L, M) weights with which a layer mixes its modules' outputs.

  "sum": 1 for each active module; "mean": 1 / (number of distinct active modules).
  """
  mask = module_mask(genotype, num_modules=num_modules)
  if aggregation == "sum":
    return mask
  if aggregation == "mean":
    return mask / mask.sum(axis=-1, keepdims=True)
  raise ValueError(f"pathnet.aggregation={aggregation!r}; choose 'mean' or 'sum'")


def mutate(
  key: jax.Array, genotype: jax.Array, *, num_modules: int, rate: float, max_shift: int = 2
) -> jax.Array:
  """Shifts each element with probability `rate` by an integer in [-max_shift, max_shift].

  Shifted indices are clamped to [0, num_modules - 1], as in the PathNet author's code. The
  shift is drawn from the closed interval (a shift of 0 is possible, as in the paper).
  """
  flip_key, shift_key = jax.random.split(key)
  flips = jax.random.bernoulli(flip_key, rate, genotype.shape)
  shifts = jax.random.randint(shift_key, genotype.shape, -max_shift, max_shift + 1, jnp.int32)
  return jnp.clip(genotype + jnp.where(flips, shifts, 0), 0, num_modules - 1)


def to_text(genotype) -> str:
  """A genotype as 'layer1: a b c | layer2: ...', for logs."""
  return " | ".join(
    f"layer{layer + 1}: " + " ".join(str(int(v)) for v in row) for layer, row in enumerate(genotype)
  )
