"""The ``limber`` command line: the Dagster layer's entry point for a terminal.

``limber demo`` materializes the asset graph on the active profile (the same loop the tests run,
``assets/materialize.py``); ``limber backbones list|describe`` says what encoder names resolve to;
``limber score-vqa`` and ``limber score-captions`` score any model's
outputs in the standard VQAv2 / COCO file formats with the pipeline's metrics alone.
"""

import argparse
import json
import sys


def demo(args: argparse.Namespace) -> int:
    # Imported here: the scoring commands need no Dagster.
    import dagster as dg

    from assets.definitions import defs
    from assets.materialize import materialize_all
    from assets.preflight import preflight

    resources = defs.resources
    problems = preflight(resources["runtime"])
    if problems:
        print("limber demo: the active profile cannot run on this machine yet; nothing was started:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    overrides = _read_overrides(args.config, defs)
    instance = dg.DagsterInstance.get()
    steps = materialize_all(
        instance,
        resources,
        run_config=lambda asset: {"ops": {asset: overrides[asset]} if asset in overrides else {}},
        on_start=lambda label: print(f"==> {label}", flush=True),
        tags={"limber/command": "demo"},
    )
    print(f"dataset parts registered: {len(instance.get_dynamic_partitions('dataset_parts'))}")
    if steps and not steps[-1].success:
        print(f"{steps[-1].label} failed; see the run {steps[-1].result.run_id} in the Dagster UI", file=sys.stderr)

    print("\nStep list (asset[partition], status, seconds, work done):")
    for step in steps:
        work = {k: step.metadata[k] for k in ("reused", "chunks_computed", "final_loss") if k in step.metadata}
        print(f"  {step.label:55s} {'ok' if step.success else 'FAILED':6s} {step.seconds:7.1f}s  {work}")
    computed = [step.label for step in steps if not step.metadata.get("reused", False)]
    print(f"\nComputed (not reused from cache): {', '.join(computed) or 'nothing'}")
    for step in steps:
        if "validation_captions" in step.metadata:
            print(f"\n{step.label} validation captions:\n{step.metadata['validation_captions']}")
        if "comparison" in step.metadata:
            print(f"\nMetric comparison ({step.metadata['path']}):\n{step.metadata['comparison']}")
    return 0 if all(step.success for step in steps) else 1


def backbones(args: argparse.Namespace) -> int:
    """``limber backbones list`` and ``limber backbones describe NAME``: what a name resolves to."""
    from pipeline import encoders

    if args.action == "list":
        print("Aliases:")
        for alias, name in encoders.ALIASES.items():
            print(f"  {alias:28s} {name}")
        print("\nAny encoder by name:")
        for form in encoders.FORMS.values():
            print(f"  {form}")
        print("\nOptions, after '?' and joined by '&' (e.g. timm:vit_base_patch14_reg4_dinov2.lvd142m?pool=8):")
        for option, what in encoders.OPTIONS.items():
            print(f"  {option:14s} {what}")
        return 0
    spec = encoders.backbone_spec(args.name, pretrained=not args.random)
    description = spec.describe()
    if args.run and not description["weights_present"]:
        description["output_shape"] = "not run: the weights are not here (--random runs the architecture)"
    elif args.run:
        import torch

        backbone = encoders.create_backbone(args.name, pretrained=not args.random)
        height, width = spec.preprocessing.settings["size"]
        noise = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=torch.Generator())
        with torch.inference_mode():
            description["output_shape"] = list(backbone.model(backbone.normalise(noise)).shape)
    if args.json:
        print(json.dumps(description, default=str))
    else:
        for key, value in description.items():
            print(f"{key:16s} {value}")
    return 0 if description["weights_present"] else 3


def score_vqa(args: argparse.Namespace) -> int:
    from pipeline.metrics.vqa import score_vqa_files

    report = score_vqa_files(args.annotations, args.questions, args.results)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"Overall Accuracy is: {report['overall']:.2f}")
        print("Per Answer Type Accuracy is the following:")
        for answer_type, accuracy in sorted(report["perAnswerType"].items()):
            print(f"{answer_type} : {accuracy:.2f}")
    return 0


def score_captions(args: argparse.Namespace) -> int:
    from pipeline.metrics.captions import score_caption_files

    scores = score_caption_files(args.annotations, args.results)
    if args.json:
        print(json.dumps(scores))
    else:
        for metric, value in scores.items():
            print(f"{metric}: {value:.4f}")
    return 0


def _read_overrides(path: str | None, defs) -> dict:
    """Per-asset run config from a YAML file: {asset name: {"config": {...}}}, as in the launchpad's
    ops; checked against each asset's config schema before anything runs."""
    if not path:
        return {}
    import dagster as dg
    import yaml

    example = "e.g. 'ops: {linear_map: {config: {lr: 0.002}}}'"
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not isinstance(document, dict) or not isinstance(document.get("ops"), dict):
        raise ValueError(f"{path} needs an 'ops' mapping of asset names to their config, {example}")
    assets = {job.name.removesuffix("_job") for job in defs.resolve_all_job_defs() if job.name.endswith("_job")}
    for asset, value in document["ops"].items():
        if asset not in assets:
            raise ValueError(f"{path}: ops.{asset}: no such asset; one of {sorted(assets)}")
        try:
            dg.validate_run_config(defs.resolve_job_def(f"{asset}_job"), {"ops": {asset: value}})
        except dg.DagsterInvalidConfigError as error:
            problems = "; ".join(" ".join(e.message.split()) for e in error.errors)
            raise ValueError(f"{path}: ops.{asset}: {problems}") from None
    return document["ops"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="limber", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="materialize every asset, every partition, on the active profile")
    demo_parser.add_argument("--config", help="YAML run config with an 'ops' section, e.g. a new linear_map lr")
    vqa = commands.add_parser("score-vqa", help="VQA accuracy of a results file (official VQAv2 formats)")
    vqa.add_argument("--annotations", required=True)
    vqa.add_argument("--questions", required=True)
    vqa.add_argument("--results", required=True)
    vqa.add_argument("--json", action="store_true", help="print overall, perAnswerType and perQuestion as JSON")
    captions = commands.add_parser("score-captions", help="caption metrics of a COCO results file")
    captions.add_argument("--annotations", required=True)
    captions.add_argument("--results", required=True)
    captions.add_argument("--json", action="store_true")
    described = commands.add_parser("backbones", help="list the encoder names accepted, or describe one")
    actions = described.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="aliases, the library forms and their options")
    describe = actions.add_parser("describe", help="what a name resolves to: tokens, dim, preprocessing, weights")
    describe.add_argument("name", help="an alias, timm:<model>[.<tag>], open_clip:<arch>[:<tag>] or hf:<repo id>")
    describe.add_argument("--random", action="store_true", help="the same architecture with random weights")
    describe.add_argument("--json", action="store_true")
    describe.add_argument("--run", action="store_true", help="push one synthetic image through the model")
    args = parser.parse_args(argv)
    commands_by_name = {"demo": demo, "score-vqa": score_vqa, "score-captions": score_captions, "backbones": backbones}
    try:
        return commands_by_name[args.command](args)
    except (ValueError, OSError, RuntimeError) as error:  # bad input or a missing file: one line, exit 2
        print(f"limber {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
