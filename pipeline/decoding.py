"""Greedy decoding from ``[image tokens, prompt]`` with the LM's KV cache (Hugging Face generate)."""

import torch

from pipeline.linear_map import LinearMap


@torch.inference_mode()
def greedy_captions(
    linear_map: LinearMap,
    lm,
    tokenizer,
    features: torch.Tensor,
    *,
    prompt: str,
    max_new_tokens: int,
    device: str,
) -> list[str]:
    """Captions for a batch of image features; the prompt is not part of the returned text."""
    linear_map.to(device).eval()
    embed = lm.get_input_embeddings()
    image_tokens = linear_map(features.float().to(device)).to(embed.weight.dtype)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    prompt_embeds = embed(prompt_ids).expand(len(features), -1, -1).to(image_tokens.dtype)
    inputs = torch.cat([image_tokens, prompt_embeds], dim=1)
    mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=device)
    new_tokens = lm.generate(
        inputs_embeds=inputs,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
