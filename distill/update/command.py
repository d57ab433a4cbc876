"""``distill update``: the command line of :func:`distill.update.pipeline.run_update`.

Events go to stdout as JSON lines (``inspector/update/protocol.py``), one per line, flushed;
everything else (logging, library warnings, stray prints) goes to stderr. SIGTERM and SIGINT
stop the run at the next batch. Exit status: 0 result, 1 error, 2 usage, 3 cancelled.
"""
from __future__ import annotations

import argparse
import logging
import sys

from inspector.update.protocol import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, encode

USAGE = """distill update --base PACKAGE --labelled DIR [--unlabelled DIR] --out DIR [--teachers DIR] [--golden DIR]
       [--seed N] [--epochs N] [--teacher-epochs N] [--version X.Y.Z] [--override-gate --confirm "text"]
       [--pushed-by NAME]"""


def add_parser(sub) -> None:
    p = sub.add_parser("update", help="the field loop: adapt the teachers to a site, distil the student, gate it",
                       usage=USAGE, description="The field loop: the teachers learn the site, the student is "
                       "distilled from them on every site frame plus a replay of the base data, recalibrated, "
                       "exported (FP32 + INT8) and gated. Events as JSON lines on stdout; exit 0 result, 1 error, "
                       "2 usage, 3 cancelled (SIGTERM/SIGINT).")
    p.add_argument("--base", required=True, help="the base student package (.crackpkg, FP32 or INT8)")
    p.add_argument("--labelled", required=True, help="the site's labelled data (a flag export or any distill layout)")
    p.add_argument("--unlabelled", help="site images without labels (default: the labelled folder's unlabelled/)")
    p.add_argument("--out", required=True, help="folder for update.json, the candidate packages and checkpoint")
    p.add_argument("--teachers", help="folder of teacher checkpoints (default models/teachers)")
    p.add_argument("--golden", help="the frozen golden set (default models/golden)")
    p.add_argument("--replay", help="base data to replay (default models/replay)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--version", help="candidate version (default: the base's minor + 1)")
    p.add_argument("--override-gate", action="store_true", help="promote even if the gate refuses (needs --confirm)")
    p.add_argument("--confirm", help="why the gate is overridden (recorded in the lineage)")
    p.add_argument("--pushed-by", help="who pushes the update (default: the login name)")
    p.add_argument("--recipe", choices=("full", "kd", "finetune", "threshold"), help="default full")
    p.add_argument("--teacher-layers", help="'all' or 'last:N' (default all)")
    p.add_argument("--replay-ratio", type=float, help="base patches replayed per site patch")
    p.add_argument("--alpha", type=float, help="weight of KD against the labels' cross-entropy")
    p.add_argument("-T", "--temperature", type=float)
    p.add_argument("--lwf", type=float, help="weight of the base student's own outputs in the KD target on replay "
                                             "patches (learning without forgetting, 0..1)")
    p.add_argument("--lwf-site", type=float, help="the same on site frames (0..1)")
    p.add_argument("--weight-mix", choices=("off", "auto"),
                   help="auto (default): the candidate is a mix of the trained and the base weights (WiSE-FT), "
                        "the mix chosen on site validation under the golden constraint; off: the trained weights")
    p.add_argument("--input-size", type=int, help="the student's input side in px (default the base's): larger "
                                                  "sees fainter cracks at more compute per tile")
    p.add_argument("--patch-size", type=int, help="patch side for mask-annotated data and unlabelled frames")
    p.add_argument("--max-unlabelled", type=int, help="cap on unlabelled site patches")
    p.add_argument("--no-calibrate", action="store_true", help="keep the 0.5 threshold")
    p.add_argument("--site-name")
    p.add_argument("--site-licence")
    p.add_argument("--threads", type=int)
    p.add_argument("--max-steps", type=int, help="cap steps per epoch (tests)")
    p.add_argument("--fast", action="store_true",
                   help="a quick, rougher update: at most 1 student and 2 teacher epochs, 500 unlabelled patches")


def config_from_args(args):
    from distill.update.config import UpdateConfig

    options = {"unlabelled": args.unlabelled, "teachers": args.teachers, "golden": args.golden,
               "replay": args.replay, "seed": args.seed, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
               "version": args.version, "confirm": args.confirm, "pushed_by": args.pushed_by, "recipe": args.recipe,
               "teacher_layers": args.teacher_layers, "replay_ratio": args.replay_ratio, "alpha": args.alpha,
               "temperature": args.temperature, "patch_size": args.patch_size, "max_unlabelled": args.max_unlabelled,
               "site_name": args.site_name, "site_licence": args.site_licence, "threads": args.threads,
               "max_steps": args.max_steps, "lwf": args.lwf, "lwf_site": args.lwf_site,
               "weight_mix": args.weight_mix, "input_size": args.input_size}
    return UpdateConfig(base=args.base, labelled=args.labelled, out=args.out, override_gate=args.override_gate,
                        calibrate=not args.no_calibrate, fast=args.fast, **{k: v for k, v in options.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    from distill.update.errors import UpdateCancelled, UpdateError
    from distill.update.events import Reporter
    from distill.update.pipeline import run_update

    events = sys.stdout
    sys.stdout = sys.stderr   # a library's print must not corrupt the event stream

    def emit(event: dict) -> None:
        events.write(encode(event) + "\n")
        events.flush()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    reporter = Reporter(emit)
    reporter.install_signal_handlers()
    try:
        run_update(config_from_args(args), reporter=reporter)
    except UpdateCancelled:
        return EXIT_CANCELLED
    except UpdateError as exc:
        print(f"distill update: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the error event is out; a traceback helps the bug report
        logging.getLogger("distill.update").exception("distill update failed: %s", exc)
        return EXIT_ERROR
    finally:
        sys.stdout = events
    return EXIT_OK
