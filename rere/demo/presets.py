"""The demo's settings: what each preset trains, samples and evaluates, with the
measurements behind each choice beside it (`rere demo` picks one with `preset`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.sft_config import SFTConfig

MODELS = ("compact", "smollm2")
EVAL_SAMPLE_SEED = 0  # of the test rows sampled for evaluation


@dataclass(frozen=True)
class DemoSettings:
    model: str  # "compact" (semantic IDs, a small Llama from scratch) or "smollm2" (titles)
    eval_examples: int | None  # every method is scored on a seeded sample of N test rows (None: all)
    eval_beams: int  # LLM rows: beam width = items ranked per example
    max_prompt_tokens: int | None  # LLM prompts drop their oldest history items beyond this
    sft: SFTConfig
    grpo: GRPOConfig
    sasrec: dict = field(default_factory=dict)  # SASRecConfig fields (`rere baseline sasrec` flags)
    compact: dict = field(default_factory=dict)  # CompactModelConfig fields (model "compact")
    sid_levels: int = 3  # semantic-ID levels built for a dataset without them (model "compact")
    # bf16 weights at evaluation. None: on CUDA, and on CPUs that multiply bf16 natively
    # (AVX512-BF16 / AMX), where SmolLM2's beam search ran 1.6x faster than in fp32 (32 s vs
    # 20 s for 24 prompts; near-tied beams may swap). The trainers keep their own default, bf16
    # autocast on CUDA only: on the CPU it sped up the forward but not the backward of an SFT
    # step (27 s in bf16, 24-31 s in fp32). The compact model always evaluates in fp32: it is
    # small enough that bf16 buys nothing and near-ties would swap.
    eval_bf16: bool | None = None


# Measured on the 2-core development machine (a Xeon with AMX), ML-100K: 1,349 movies,
# 78,675 training, 9,834 validation and 9,835 test rows.
#
# compact: semantic IDs of 3 x 16 codes + 1 (8 s to build), a 2-layer, 128-wide Llama (~0.43M
# parameters, 76-token vocabulary); a 10-item prompt is ~46 tokens.
COMPACT_CPU = DemoSettings(
    model="compact",
    # All 9,835 test rows: 20-beam search of the compact model ranks ~190 rows/s (3,000 in
    # 15 s), so the whole split costs under a minute and gives the tightest intervals
    # (on 1,000 rows the NDCG@10 difference's 95% interval was +-0.008 wide).
    eval_examples=None,
    eval_beams=20,
    max_prompt_tokens=None,
    # SFT: 615 steps of 128 rows (one epoch of ML-100K; on a smaller dataset as many epochs as
    # make 615 steps), lr 2e-3, ~2.6 min (4 steps/s). Validation NDCG@10 on 500 rows 0.036 /
    # 0.048 / 0.058 / 0.066 at steps 150 / 300 / 450 / 615 (lr 1e-3 at batch 64 reached 0.074
    # after two epochs, 6 min). best/ is the best of three validations on 1,000 rows (~6 s each).
    sft=SFTConfig(epochs=100, max_steps=615, batch_size=128, lr=2e-3, warmup_ratio=0.05, eval_every=205,
                  eval_examples=1000, patience=0, save_every=10_000, keep_checkpoints=1),
    # ReRe: 32 prompts x 16 beams a step, ~0.45 s (2.2-2.6 steps/s). Chosen on the validation
    # split (2,000 rows; the SFT model: NDCG@10 0.0579): lr 1e-4 fell to 0.0538-0.0550 within
    # 300 steps (at 128 prompts a step too: 0.0546), 3e-5 to 0.0570; lr 1e-5 rose to 0.0594
    # at 150 steps, and over 1,000 steps to 0.0589 / 0.0598 / 0.0600 / 0.0590 at steps 200 /
    # 400 / 600 / 800 (benchmarks/RESULTS.md, "The demo's settings"). Hence 600 steps at 1e-5,
    # validated every 150 on those 2,000 rows (~12 s each), the best kept. The reference model
    # stays the SFT model (ref_sync_every=0), as in every run measured: the recipe's sync at
    # step 512 was not tried here.
    grpo=GRPOConfig(num_generations=16, prompts_per_step=32, rollout_batch=32, micro_batch=16, max_steps=600,
                    lr=1e-5, ref_sync_every=0, eval_every=150, eval_examples=2000, save_every=10_000,
                    keep_checkpoints=1),
    # SASRec: 5-7 s per epoch, most of it validation; 10 epochs reach valid NDCG@10 0.057 where
    # early stopping (best epoch 19 of 24, 110 s) reaches 0.062.
    sasrec={"max_len": 10, "epochs": 10},
)
# smollm2: ReRe's prompt is 77 tokens of instruction plus ~12.3 tokens a title (~200 tokens
# with 10 titles). Another job shared the machine, and the same step took up to 1.8x longer
# from one hour to the next.
CPU_PROMPT_TOKENS = 140  # ~5 titles (134 tokens on average): SFT and beam search cost ~ prompt length
SMOLLM2_CPU = DemoSettings(
    model="smollm2",
    # 200 random test rows (~80 users). SmolLM2 beam search with 10 beams (the fewest that give
    # HR@10): 0.8-1.9 s per example in fp32, 1.6x less in bf16: 145-154 s per LLM row.
    eval_examples=200,
    eval_beams=10,
    max_prompt_tokens=CPU_PROMPT_TOKENS,
    # Full fine-tuning, 16 sequences a step: 17-30 s per step (forward + backward of 135M
    # parameters over ~150 tokens a sequence). 320 rows = 20 steps, 6-9 min: the largest part
    # of the budget, and still far too little for SmolLM2 to learn the catalog (HR@10
    # 0.010-0.020 on these 200 rows; random: 0.007). One epoch over the sample, so the cosine
    # schedule runs to its end. lr 2e-4 did as well as 5e-4 (HR@10 0.020 vs 0.015, fp32
    # evaluation). No validation: it would cost beam searches.
    sft=SFTConfig(epochs=1, batch_size=16, lr=2e-4, warmup_ratio=0.1, eval_examples=0, save_every=10_000,
                  keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS, train_examples=320),
    # GRPO, 4 prompts x G beams a step: 14-20 s with G = 8 (rollout ~4 s, update ~10-15 s),
    # ~30 s with G = 16. 8 steps of G = 8 (173 s), reference lr 1e-5: ReRe runs, but the SFT
    # model rarely has the target among its 8 beams, and a group without it has rewards all 0
    # (no gradient). results.md says how many steps learnt anything.
    grpo=GRPOConfig(num_generations=8, prompts_per_step=4, rollout_batch=4, micro_batch=4, max_steps=8,
                    eval_examples=0, save_every=10_000, keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS),
    sasrec={"max_len": 10, "epochs": 10},
)
# The reference setup: SFTConfig's and GRPOConfig's defaults, every test example, 50 beams.
GPU = DemoSettings(model="smollm2", eval_examples=None, eval_beams=50, max_prompt_tokens=None,
                   sft=SFTConfig(), grpo=GRPOConfig(), sasrec={"max_len": 10})


def preset(model: str | None, gpu: bool) -> DemoSettings:
    """The settings for `model` (default: compact on the CPU, smollm2 with a GPU)."""
    model = model or ("smollm2" if gpu else "compact")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "compact":
        return COMPACT_CPU
    return GPU if gpu else SMOLLM2_CPU
