"""rere.sampler: constrained beam search (and sampling) over a catalog, for any trainer.

Importable without rere's trainer or its dependencies: TRL, verl or a home-grown loop can
`from rere.sampler import beam_search`.
"""
from rere.sampler.beam_search import BeamSearchOutput, beam_search
from rere.sampler.exclusion import ExcludedItems

__all__ = ["BeamSearchOutput", "ExcludedItems", "beam_search"]
