"""Values shared across the package."""

# The label of a position the loss skips: prompts, padding, example starts. torch's cross-entropy
# and transformers' models skip this value by default.
IGNORE_INDEX = -100

# Attention implementations that attend within each example of one concatenated row, reading the
# boundaries from position_ids (flash-attention's varlen kernels; sft_exp.models.attention for SDPA).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa_varlen")
# Implementations that keep examples apart when position_ids restart (varlen, or transformers'
# masking_utils deriving a block-diagonal mask).
SEPARATING_ATTENTION = ("eager", "sdpa", "flex_attention", *VARLEN_ATTENTION)
