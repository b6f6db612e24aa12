"""rere.sampler: constrained beam search and sampling over a catalog, for any trainer.

Importable without rere's trainer or its dependencies: TRL, verl or a home-grown loop can
`from rere.sampler import beam_search`. Adapters: `rere.sampler.hf.TrieLogitsProcessor`
(for `model.generate`) and `rere.sampler.trl.make_rollout_func` (TRL's GRPOTrainer).
"""
from rere.sampler.beam_search import BeamSearchOutput, beam_search
from rere.sampler.exclusion import ExcludedItems
from rere.sampler.padding import left_pad
from rere.sampler.sampling import SampleOutput, sample

__all__ = ["BeamSearchOutput", "ExcludedItems", "SampleOutput", "beam_search", "left_pad", "sample"]
