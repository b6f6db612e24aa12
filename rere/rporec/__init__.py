"""RPORec: reasoning-augmented recommendation with a recommendation head (RecHead).

The LLM writes its reasoning about the user; the RecHead scores the whole catalog from the
LLM's state after prompt + reasoning; stage 1 trains the head, stage 2 fine-tunes the
reasoning with GRPO, the frozen head's rank of the target as its reward.

    rec_head.py    the head: projections, item encodings + residual, cosine / temperature
    retrieval.py   chunked top-k and target ranks over millions of items
    encoding.py    the LLM's pooled states of users (prompt + reasoning) and items
    reasoning.py   the reasoning prompt, generation, format check, cache
    rewards.py     format check x NDCG of the target (+ shaping)
    stage1.py      reasoning once, then the head by sampled softmax (`rere rporec stage1`)
    stage2.py      GRPO on the reasoning (`rere rporec stage2`)
    evaluation.py  `rere evaluate --method rporec`: the same metrics table as ReRe's
"""
