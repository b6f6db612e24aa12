"""Datasets: loaders for each source format, all producing a `Dataset` (a `Catalog` and
splits of `Example`s) that `rere prepare` saves as one documented folder (see dataset.py).

Loaders, one module per source format: `rere_csv` (the ReRe/D3 CSV files), `semantic_ids`
(MiniOneRec-style `index.json` catalogs), `amazon_raw` (raw Amazon Reviews 2018), `yelp`
(Yelp open dataset), `movielens` (GroupLens 100K/1M and RecBole atomic files).

What models may learn from a dataset, without ever seeing an evaluated target:
`training_sequences` (per-user sequences, the baselines' and the SID builder's input) and
`examples` (the (history, next item) rows the LLM trainers fit).
"""
from rere.data.dataset import BadRows, Dataset, Example

__all__ = ["BadRows", "Dataset", "Example"]
