"""Twin-VAE: losses, the jitted twin training step, training, transfer methods and plots."""
