"""Values shared across the package."""

# The label of a position the loss skips: prompts, padding, example starts. torch's cross-entropy
# and transformers' models skip this value by default.
IGNORE_INDEX = -100
