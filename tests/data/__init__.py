"""Data preparation: sources and file types, chat templates and masks, packing, mixtures, the cache, contamination."""
