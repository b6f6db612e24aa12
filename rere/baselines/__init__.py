"""Non-LLM baselines for the comparison table: most-popular and SASRec.

Both train on the sequences of `rere.data.training_sequences.training_data` (never the
evaluated split's targets) and rank with `rank(examples, k) -> int64 [n, k]` catalog
positions, the input of `rere.metrics.ranking_metrics`. `rere baseline` runs them end to end.
"""
from rere.baselines.popularity import Popularity
from rere.baselines.sasrec import SASRec, SASRecConfig

__all__ = ["Popularity", "SASRec", "SASRecConfig"]
