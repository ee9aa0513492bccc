"""`jibjib make-demo`: the synthetic demo set and its annotated soundscapes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_make_demo(args: argparse.Namespace) -> None:
    from jibjib.demo.species import DEFAULT_SEED, make_demo

    seed = DEFAULT_SEED if args.seed is None else args.seed
    summary = make_demo(args.out_dir, n_species=args.species, recordings_per_species=args.recordings, seed=seed,
                        background_recordings=args.background_recordings)
    print(
        f"demo set in {args.out_dir}: {summary.n_species} species, {summary.n_recordings} recordings, "
        f"{summary.n_files} files ({summary.n_background_files} in noise/, without birds), "
        f"{summary.seconds:.0f} s of audio",
        file=sys.stderr,
    )
    if args.soundscapes != "":
        from jibjib.demo.soundscapes import make_soundscapes

        # Beside the species folders, never inside: there it would be read as one more species.
        folder = args.soundscapes or str(Path(args.out_dir).parent / "demo_soundscapes")
        scapes = make_soundscapes(folder, n_species=args.species, seed=seed)
        print(f"demo soundscapes in {folder}: {scapes.n_files} files ({', '.join(scapes.files)}), "
              f"{scapes.seconds / 60:.1f} min, {scapes.n_calls} annotated calls", file=sys.stderr)
    if args.field:
        from jibjib.demo.field import make_field_audio

        names, seconds = make_field_audio(args.field, n_species=args.species, seed=seed)
        print(f"demo field audio (unlabelled, for self-training) in {args.field}: {len(names)} files, "
              f"{seconds / 60:.1f} min", file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("make-demo", help="write the synthetic demo bird set")
    p.add_argument("out_dir", help="folder to write <species>/<species>-<n>_<k>.wav into")
    p.add_argument("--species", type=int, default=8)
    p.add_argument("--recordings", type=int, default=20, help="recordings per species")
    p.add_argument("--background-recordings", type=int, default=40,
                   help="recordings without birds (wind, rain, insects, traffic) in OUT_DIR/noise/")
    p.add_argument("--seed", type=int, help="default: a seed whose demo fills every split")
    p.add_argument("--soundscapes", metavar="DIR",
                   help="folder for the annotated demo soundscapes (default: demo_soundscapes beside OUT_DIR; "
                        "'' for none)")
    p.add_argument("--field", metavar="DIR",
                   help="also write unlabelled demo field audio for self-training to this folder (make demo: "
                        "resources/demo_field)")
    p.set_defaults(func=cmd_make_demo)
