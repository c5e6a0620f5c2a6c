"""The paper profile materialized whole, by the loop ``limber demo`` runs, at sizes a CPU finishes.

The profile is read when the Definitions load, so this runs in a process of its own:
``LIMBER_PROFILE=paper python -m tests.paper_run SUMMARY.json`` with ``LIMBER_DATA``,
``LIMBER_STORAGE`` and every ``LIMBER_WEIGHTS_<NAME>`` set (tests/test_paper_profile.py writes the
data and the random weights). It writes a JSON summary of every step, its checks and the
partitions materialized. ``write_random_weights`` writes the five paper backbones and a GPT-J of
tiny width in the formats their real loaders read.
"""

import json
import os
import sys
from pathlib import Path

# The paper's code paths (grid and pooled maps, gradient accumulation, several shuffle buffers,
# few-shot prompts of up to 5 x 196 image tokens) at sizes that take minutes on 2 cores.
TRAINING = {
    "steps": 16,
    "batch_size": 4,
    "micro_batch_size": 2,
    "buffer_chunks": 1,
    "lr": 1e-2,
    "warmup_steps": 4,
    "checkpoint_every": 8,
    "sample_captions": 2,
    "max_caption_tokens": 16,
}
PAPER_SMALL = {
    "image_features": {"config": {"batch_size": 4, "chunk_rows": 4, "workers": 1}},  # 2-core CI
    "linear_map": {"config": TRAINING},
    "adapters": {"config": TRAINING},
    "captions": {"config": {"batch_size": 4, "max_new_tokens": 4}},
    "vqa_answers": {"config": {"batch_size": 4, "max_new_tokens": 2}},
    "image_prompt_readout": {"config": {"batch_size": 4}},
    "caption_gallery": {"config": {"images": 2, "questions": 2}},
}


def write_random_weights(directory: Path, tokenizer) -> dict[str, str]:
    """Random weights of the real classes where each loader looks; returns the LIMBER_WEIGHTS_* variables.
    Stored as float16 (the loaders cast to float32), which halves the gigabytes written."""
    import open_clip
    import timm
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, BeitModel, GPTJConfig, GPTJForCausalLM

    from pipeline.encoders import HF_FALLBACK_ARCHITECTURES

    def half(model):
        return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(half(open_clip.create_model("RN50x16")), directory / "clip_rn50x16.safetensors")
    save_file(half(timm.create_model("nf_resnet50")), directory / "nf_resnet50.safetensors")
    beit_architecture = HF_FALLBACK_ARCHITECTURES["microsoft/beit-large-patch16-224-pt22k"]
    BeitModel(AutoConfig.for_model(**beit_architecture["config"])).half().save_pretrained(directory / "beit_large")
    processor = dict(beit_architecture["processor"])
    getattr(transformers, processor.pop("image_processor_type"))(**processor).save_pretrained(directory / "beit_large")
    gptj = GPTJForCausalLM(
        GPTJConfig(
            vocab_size=len(tokenizer),
            n_embd=64,
            n_layer=2,
            n_head=4,
            rotary_dim=8,
            n_positions=2048,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    gptj.save_pretrained(directory / "gpt-j-tiny")
    tokenizer.save_pretrained(directory / "gpt-j-tiny")
    return {
        "LIMBER_WEIGHTS_CLIP_RN50X16": str(directory / "clip_rn50x16.safetensors"),
        "LIMBER_WEIGHTS_NFRN50": str(directory / "nf_resnet50.safetensors"),
        # One random BEiT-Large serves both entries: they differ only in their released weights.
        "LIMBER_WEIGHTS_BEIT_LARGE": str(directory / "beit_large"),
        "LIMBER_WEIGHTS_BEIT_LARGE_FT": str(directory / "beit_large"),
        "LIMBER_WEIGHTS_GPT_J_6B": str(directory / "gpt-j-tiny"),
    }


def main(summary_path: str) -> int:
    if os.environ.get("LIMBER_PROFILE") != "paper":
        raise SystemExit("run with LIMBER_PROFILE=paper")
    import dagster as dg

    from assets.definitions import ALL_ASSETS
    from assets.materialize import materialize_all
    from assets.preflight import preflight
    from assets.resources import Runtime

    runtime = Runtime()
    summary = {"preflight": preflight(runtime), "steps": [], "partitions": {}}
    if not summary["preflight"]:
        instance = dg.DagsterInstance.ephemeral()
        steps = materialize_all(
            instance,
            {"runtime": runtime},
            run_config=lambda asset: {"ops": {asset: PAPER_SMALL[asset]} if asset in PAPER_SMALL else {}},
            on_start=lambda label: print(f"==> {label}", flush=True),
        )
        summary["steps"] = [
            {
                "label": step.label,
                "asset": step.asset,
                "success": step.success,
                "seconds": round(step.seconds, 2),
                "metadata": step.metadata,
                "checks": {c.check_name: c.passed for c in step.result.get_asset_check_evaluations()},
            }
            for step in steps
        ]
        for asset in ALL_ASSETS:
            key = asset.key
            expected = (
                asset.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
                if asset.partitions_def
                else []
            )
            summary["partitions"][key.to_user_string()] = {
                "expected": sorted(map(str, expected)),
                "materialized": sorted(map(str, instance.get_materialized_partitions(key))) if expected else [],
            }
    Path(summary_path).write_text(json.dumps(summary, default=str, indent=1))
    return 0 if not summary["preflight"] and all(s["success"] for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
