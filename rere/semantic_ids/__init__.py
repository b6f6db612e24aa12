"""Semantic IDs built from item data: item embeddings (collaborative, text, or your own)
quantised into short code paths by balanced residual k-means. `rere sid build` writes a
prepared dataset whose catalog spells every item with them."""
from rere.semantic_ids.rq_kmeans import SemanticIdCodes, rq_kmeans

__all__ = ["SemanticIdCodes", "rq_kmeans"]
