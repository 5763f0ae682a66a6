"""Model management: finding checkpoints, reading their layouts, loading and caching them."""
