"""Synthesize a speech dataset from a Parquet manifest with CSM on Ray.

    python jobs/synthesize.py --config configs/demo.yaml --input examples/dialogues.parquet --output out/demo
    ray job submit --working-dir . -- python jobs/synthesize.py --config ... --input ... --output ...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synth.config import ConfigError, load_config  # noqa: E402
from synth.manifest import ManifestError, open_manifest  # noqa: E402
from synth.plan import plan_shards  # noqa: E402
from synth.ray_runner import RunError, check_unique_ids, dry_run, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--input", required=True, help="manifest: a .parquet file or a directory of them (local or URI)")
    parser.add_argument("--output", help="output dataset directory (local or URI); required unless --dry-run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set generation.batch_size=4 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate the manifest and print the plan; load no model")
    parser.add_argument("--allow-changes", action="store_true",
                        help="continue an output whose recorded settings differ from these")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, args.overrides)
        if args.dry_run:
            manifest = open_manifest(args.input)
            check_unique_ids(manifest)
            plan = plan_shards(manifest, config.output.scripts_per_shard)
            print(dry_run(config, manifest, plan).render())
            return 0
        if not args.output:
            parser.error("--output is required unless --dry-run")
        summary = run(config, args.input, args.output, allow_changes=args.allow_changes)
    except (ConfigError, ManifestError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
