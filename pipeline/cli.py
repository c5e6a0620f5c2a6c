"""The ``limber`` command line: ``limber demo`` materializes the asset graph on the active profile."""

import argparse
import sys
import time


def demo(args: argparse.Namespace) -> int:
    # Dagster is imported here, not at module level: the ML core stays importable without it.
    import dagster as dg

    from assets.definitions import ALL_ASSETS, defs

    instance = dg.DagsterInstance.get()
    resources = defs.resources
    overrides = _read_overrides(args.config)
    steps = []
    for asset in ALL_ASSETS:
        keys = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
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
    args = parser.parse_args(argv)
    return {"demo": demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
