"""Streaming: the slab pool and budget, per-chunk load plans, the worker's job, the prefetching
stream and the loaders; the Piece / WeightSource protocols the model reads through."""
