"""runner: config-driven gradient-descent experiments on y = a*x + b (PyTorch, Hydra, MLflow)."""
