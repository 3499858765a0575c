"""Small ``nn`` building blocks shared by the zoo's MIL models."""

from zoo.nn.attention import (
    GatedAttention,
    attention_pool,
    diversity_loss,
    masked_softmax,
    stochastic_topk_mask,
)

__all__ = ["GatedAttention", "attention_pool", "diversity_loss", "masked_softmax", "stochastic_topk_mask"]
