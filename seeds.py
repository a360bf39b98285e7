"""Train and evaluate one configuration with several seeds: python seeds.py --seeds 1,2,3
[--output_dir outputs/seeds] [train.py flags ...]

Each seed runs train.py (into <output_dir>/seed-<n>/train) and eval.py on its last checkpoint
(<output_dir>/seed-<n>/eval) with the same flags, in processes of their own. Prints one JSON
line per run (seed, mAP, AP50) and a summary (mean and sample standard deviation), also
written to <output_dir>/seeds.json. E.g. the spread of make demo:
python seeds.py --seeds 1,2,3 --config configs/demo.yaml --data_url demo_data
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 1,2,3")
    parser.add_argument("--output_dir", default="outputs/seeds")
    args, flags = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {args.seeds!r}: expected distinct seeds >= 0, comma-separated")
    if any(f.split("=")[0] in ("--seed", "--checkpoint_path") for f in flags):
        parser.error("--seed and --checkpoint_path are set per run by seeds.py")
    from src.cli import run_interruptible
    from src.train.seeds import SeedRunError, run_seeds

    def work() -> int:
        try:
            run_seeds(seeds, args.output_dir, flags)
        except SeedRunError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_interruptible(
        work, "seeds.py", f"the seeds finished so far are in {args.output_dir}/seed-<n>; the "
        "run under way stopped as train.py and eval.py stop (its own line is above)",
        mindspore=False)


if __name__ == "__main__":
    sys.exit(main())
