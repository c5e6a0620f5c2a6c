"""The linear map per backbone, trained on cached train features into the frozen LM."""

import functools

import dagster as dg
import numpy as np
import pandas as pd
import torch

from assets.config import TrainingConfig
from assets.datasets import manifests
from assets.execution import GPU_POOL, TRAINING_GPU_TAGS
from assets.image_features import image_features
from assets.inputs import Inputs, MissingInput, stored_result
from assets.language_model import language_model
from assets.partitions import ON_MISSING, TRAIN, VALIDATION, backbone_partitions, registered_parts
from assets.resources import Runtime
from pipeline.decoding import greedy_captions
from pipeline.distributed import TrainingJob, train_data_parallel
from pipeline.encoders import backbone_spec
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap
from pipeline.plots import loss_curve_png, markdown_image
from pipeline.training import final_loss, training_set
from storage import config_hash
from storage.artifacts import TrainedMap, keyed_map
from storage.layout import write_index

LOSS_DECREASED = "loss_decreased"


def loss_check_spec(asset: str) -> dg.AssetCheckSpec:
    """The trained-map assets' blocking check (``linear_map``, ``adapters``)."""
    return dg.AssetCheckSpec(
        LOSS_DECREASED,
        asset=asset,
        blocking=True,
        description="finite losses; mean loss of the last quarter of the steps below the first quarter's",
    )


def loss_check(losses_by_seed: list[list[float]]) -> dg.AssetCheckResult:
    """The loss fell for every seed: its mean over the last quarter of the steps is below that over
    the first quarter."""
    falls = []
    for losses in losses_by_seed:
        quarter = max(1, len(losses) // 4)
        first, last = float(np.mean(losses[:quarter])), float(np.mean(losses[-quarter:]))
        falls.append((bool(np.isfinite(losses).all() and last < first), first, last))
    return dg.AssetCheckResult(
        check_name=LOSS_DECREASED,
        passed=all(passed for passed, _, _ in falls),
        metadata={
            "first_quarter_loss": [round(first, 4) for _, first, _ in falls],
            "last_quarter_loss": [round(last, 4) for _, _, last in falls],
        },
    )


def _train_inputs(context, runtime: Runtime, backbone: str) -> tuple[Inputs, list[str], list]:
    """The train parts whose features are extracted, read through ``Inputs`` (so they are in the key)."""
    inputs = Inputs(runtime)
    registered = registered_parts(context.instance, TRAIN)
    parts, read = [], []
    for part in registered:
        try:
            read.append((inputs.features(backbone, part), inputs.manifest(part)))
            parts.append(part)
        except MissingInput:
            continue
    if not parts:
        raise FileNotFoundError(
            f"no {backbone} features of a {TRAIN} part are extracted yet: materialize image_features first"
        )
    if len(parts) < len(registered):
        context.log.warning(
            f"{len(registered) - len(parts)} of {len(registered)} {TRAIN} parts have no "
            f"{backbone} features yet and are left out of training"
        )
    return inputs, parts, read


def validation_captions(context, runtime: Runtime, config: TrainingConfig, backbone: str, mapping, lm, tokenizer):
    """A few validation images captioned from the paper's prompt and from none: a small LM's own
    continuation of the prompt can override the image tokens, and both show it. Shown in the
    metadata only: they are not part of the stored map."""
    inputs = Inputs(runtime)
    part = registered_parts(context.instance, VALIDATION)[0]
    manifest = inputs.manifest(part).head(config.sample_captions)
    store = inputs.features(backbone, part)
    rows = rows_by_id(store.ids, manifest["image_id"].tolist(), "validation captions")
    sample = torch.from_numpy(ChunkedRows(store.features)[rows])
    table = pd.DataFrame(
        {"image_id": manifest["image_id"], "reference": [c[0] if len(c) else "" for c in manifest["captions"]]}
    )
    for column, prompt in ((f"from '{config.sample_prompt}'", config.sample_prompt), ("no prompt", "")):
        table[column] = greedy_captions(
            mapping,
            lm,
            tokenizer,
            sample,
            prompt=prompt,
            max_new_tokens=config.sample_caption_tokens,
            device=runtime.torch_device(),
        )
    return table


def _maps_result(runtime: Runtime, config: TrainingConfig, system: str, maps: dict, keys: dict, trained_seeds, samples):
    """The materialization of a system's maps: per seed, its first and final loss, speed and key;
    the first seed's loss curve and validation captions."""
    per_seed = pd.DataFrame(
        [
            {
                "seed": seed,
                "first_loss": round(trained.summary["losses"][0], 4),
                "final_loss": round(final_loss(trained.summary["losses"], config.final_loss_window), 4),
                "samples_per_second": trained.summary["samples_per_second"],
                "key": keys[seed],
            }
            for seed, trained in maps.items()
        ]
    )
    first = min(maps)
    summary = maps[first].summary
    loss_curve = runtime.layout.loss_curve(runtime.layout.trained_map(system, runtime.language_model, first))
    return stored_result(
        runtime.layout.linear_map(system, runtime.language_model),
        config_hash(keys),
        not trained_seeds,
        seeds=len(maps),
        trained_seeds=trained_seeds,
        train_parts=len(summary["train_parts"]),
        trained_parameters=summary.get("trained_parameters", 0),
        steps=len(summary["losses"]),
        final_loss=float(per_seed["final_loss"].mean()),
        final_loss_by_seed=dg.MetadataValue.md(per_seed.to_markdown(index=False)),
        shuffle_buffers=summary["shuffle_buffers"],
        recompute=summary.get("recompute", False),
        processes=summary.get("processes", 1),
        machine=dg.MetadataValue.json(summary.get("machine", {})),
        loss_curve=dg.MetadataValue.md(markdown_image(loss_curve.read_bytes(), f"loss curve, seed {first}")),
        validation_captions=dg.MetadataValue.md(samples.to_markdown(index=False)),
    )


def trained_maps(context, config: TrainingConfig, runtime: Runtime, backbone: str, system: str, new_map):
    """Trains (or reuses) ``system``'s map on ``backbone``'s train features, one per training seed,
    each stored under its own key (so an added seed trains only itself), and reports them, with the
    loss check over every seed. ``new_map(lm_dim, lm)`` makes the untrained map: LiMBeR's, or the
    tuned baseline's."""
    inputs, parts, read = _train_inputs(context, runtime, backbone)
    inputs.language_model()
    devices = runtime.torch_devices(config.processes)  # leased first: the LM goes on the first
    lm, tokenizer, lm_description = runtime.load_lm()
    train_set = functools.cache(lambda: training_set(read))  # loaded once, by the first seed that trains

    def train(seed: int, checkpoint_dir, on_checkpoint) -> TrainedMap:
        features, captions, rows = train_set()
        torch.manual_seed(seed)  # the initial weights, too, come from the seed
        mapping = new_map(lm_description["hidden_size"], lm)
        trained = sum(p.numel() for p in mapping.parameters())
        context.log.info(
            f"training {system} seed {seed} ({trained:,} parameters) on {len(rows)} cached {backbone} features "
            f"from {len(parts)} parts for {config.steps} steps on {', '.join(devices)}"
        )

        def log_loss(step: int, loss: float) -> None:
            if step % config.log_every == 0:
                context.log.info(f"seed {seed} step {step}: loss {loss:.4f}")

        job = TrainingJob(
            mapping, runtime.lm_loader(), features, captions, rows, config.train_config(), seed, checkpoint_dir
        )
        result = train_data_parallel(
            job,
            devices,
            lm,
            tokenizer,
            timeout_s=config.collective_timeout_s,
            on_step=log_loss,
            on_checkpoint=on_checkpoint,
        )
        per_token = result.activation_bytes_per_token
        context.log.info(
            f"gradient checkpointing {'on' if result.recompute else 'off'}"
            + (f": {per_token / 2**20:.2f} MiB of activations per token measured" if per_token else " (CPU)")
        )
        summary = result.summary(
            settings=config.weight_settings(seed),
            trained_parameters=trained,
            train_rows=len(rows),
            train_parts=parts,
            processes=len(devices),
            machine=runtime.machine(),
        )
        loss_png = loss_curve_png(result.losses, f"{system} (seed {seed}) -> {runtime.language_model}")
        return TrainedMap(mapping, summary, loss_png)

    # The architecture (the untrained map's config: dropout, LayerNorm order, adapters) is in the key.
    architecture = new_map(lm_description["hidden_size"], lm).config()
    maps, keys, trained_seeds = {}, {}, []
    for seed in config.seed_list():
        keys[seed] = inputs.key(training=config.weight_settings(seed), backbone=backbone, architecture=architecture)
        directory = runtime.layout.trained_map(system, runtime.language_model, seed)
        about = {"system": system, "language_model": runtime.language_model}
        maps[seed], reused = keyed_map(runtime.mirror(directory), keys[seed], functools.partial(train, seed), about)
        if reused:
            context.log.info(f"seed {seed}: reusing the map trained from these inputs and settings: {directory}")
        else:
            trained_seeds.append(seed)
    write_index(runtime.layout.map_index(system, runtime.language_model), {"seeds": keys})

    samples = validation_captions(context, runtime, config, backbone, maps[min(maps)].linear_map, lm, tokenizer)
    yield _maps_result(runtime, config, system, maps, keys, trained_seeds, samples)
    yield loss_check([trained.summary["losses"] for trained in maps.values()])


@dg.asset(
    partitions_def=backbone_partitions,
    deps=[
        dg.AssetDep(image_features, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("backbone")),
        dg.AssetDep(manifests, partition_mapping=dg.AllPartitionMapping()),
        language_model,
    ],
    automation_condition=ON_MISSING,  # a new backbone's map, once all its features are stored
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool=GPU_POOL,
    op_tags=TRAINING_GPU_TAGS,
    check_specs=[loss_check_spec("linear_map")],
)
def linear_map(context: dg.AssetExecutionContext, config: TrainingConfig, runtime: Runtime):
    """LiMBeR's linear layer from one backbone's features into the LM's input embeddings.

    Trains one map per training seed on every registered train part (all CC3M shards) whose
    features are extracted. Each is keyed by those parts' features and manifests, the LM, the map's
    architecture and the settings its weights depend on, its seed included.
    """
    backbone = context.partition_key
    spec = backbone_spec(backbone)
    yield from trained_maps(
        context,
        config,
        runtime,
        backbone,
        system=backbone,
        new_map=lambda lm_dim, lm: LinearMap(spec.feature_dim, lm_dim, spec.layout, dropout=config.dropout),
    )
