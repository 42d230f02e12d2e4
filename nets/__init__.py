"""PyTorch training with per-layer probes (in progress)."""
