"""The ``limber`` command line.

``limber demo`` materializes the asset graph on the active profile; ``limber score-vqa`` and
``limber score-captions`` score any model's outputs in the standard VQAv2 / COCO file formats.
"""

import argparse
import json
import sys
import time


def demo(args: argparse.Namespace) -> int:
    # Dagster is imported here, not at module level: the ML core stays importable without it.
    import dagster as dg

    from assets.definitions import ALL_ASSETS, defs
    from assets.partitions import register_dataset_parts

    instance = dg.DagsterInstance.get()
    resources = defs.resources
    new = register_dataset_parts(instance, resources["limber"].data_root)
    print(f"dataset parts registered: {len(new)} new, "
          f"{len(instance.get_dynamic_partitions('dataset_parts'))} in all", flush=True)
    overrides = _read_overrides(args.config)
    steps = []
    for asset in ALL_ASSETS:
        keys = asset.partitions_def.get_partition_keys(dynamic_partitions_store=instance) if asset.partitions_def else [None]
        for key in keys:
            label = f"{asset.key.to_user_string()}[{key}]" if key else asset.key.to_user_string()
            print(f"==> {label}", flush=True)
            started = time.perf_counter()
            result = dg.materialize(
                ALL_ASSETS, selection=[asset], partition_key=key, instance=instance, resources=resources,
                raise_on_error=False, tags={"limber/command": "demo"},
                run_config={"ops": {name: cfg for name, cfg in overrides.items() if name == asset.key.to_user_string()}},
            )
            seconds = time.perf_counter() - started
            metadata = {}
            for event in result.get_asset_materialization_events():
                metadata = {k: v.value for k, v in event.materialization.metadata.items()}
            steps.append((label, "ok" if result.success else "FAILED", seconds, metadata))
            if not result.success:
                print(f"{label} failed; see the run {result.run_id} in the Dagster UI", file=sys.stderr)
                break
        if steps and steps[-1][1] != "ok":
            break

    print("\nStep list (asset[partition], status, seconds, work done):")
    for label, status, seconds, metadata in steps:
        work = {k: metadata[k] for k in ("reused", "chunks_computed", "chunks_reused", "final_loss") if k in metadata}
        print(f"  {label:55s} {status:6s} {seconds:7.1f}s  {work}")
    computed = [label for label, _, _, metadata in steps if metadata.get("reused") is False
                or metadata.get("chunks_computed", 0) > 0]
    print(f"\nComputed (not reused from cache): {', '.join(computed) or 'nothing'}")
    for label, status, seconds, metadata in steps:
        if "validation_captions" in metadata:
            print(f"\n{label} validation captions:\n{metadata['validation_captions']}")
        if "comparison" in metadata:
            print(f"\nMetric comparison ({metadata['path']}):\n{metadata['comparison']}")
    return 0 if all(status == "ok" for _, status, _, _ in steps) else 1


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


def _read_overrides(path: str | None) -> dict:
    """Per-asset run config from a YAML file: {asset name: {"config": {...}}}, as in the launchpad's ops."""
    if not path:
        return {}
    import yaml

    return yaml.safe_load(open(path))["ops"]


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
    args = parser.parse_args(argv)
    try:
        return {"demo": demo, "score-vqa": score_vqa, "score-captions": score_captions}[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"limber {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
