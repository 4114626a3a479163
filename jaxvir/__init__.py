"""jaxvir: fast transfer learning on virus and medical images with JAX and Flax NNX."""
