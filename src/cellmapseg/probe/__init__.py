"""Memory probe and caching-strategy selection: the first two stages before training."""
