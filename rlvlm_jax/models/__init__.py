"""LLaVA-style vision-language model in Flax NNX: CLIP tower, projector, LLaMA/Mistral decoder."""
