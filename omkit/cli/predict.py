"""Segment BraTS cases with a trained model (or an ensemble): label maps in the input's space.

Examples::

    omkit predict -i BraTS2018/Brats18_CBICA_ABM_1 -o preds/ -m runs/cga/model.pt
    omkit predict -i BraTS2018/ -o preds/ -m fold0/model.pt -m fold1/model.pt --overlay
    torchrun --nproc_per_node=2 -m omkit predict -i BraTS2018/ -o preds/ -m runs/cga/model.pt --device cuda
    omkit predict -i BraTS2018/ -o preds/ -m runs/cga/model.pt --tta          # test-time mirroring, 8 flips
    omkit predict -i BraTS2018/ -o preds/ -m runs/cga/model.pt --inference dense   # backbone once per voxel

Writes ``OUT/<case-id>.nii.gz`` (uint8 labels in the chosen BraTS convention,
the input's affine and header), and on request ``OUT/<case-id>_probabilities.npz``
(per-task probabilities) and ``OUT/<case-id>_overlay.png`` (paper Fig. 7 style).
Under torchrun each process takes the next case no other has claimed
(``omkit.inference.cohort``; ``--shard round-robin``: fixed shares); each case is
written by exactly one, and they report to the first at the end.

For a cohort: ``--skip-existing`` skips the cases whose outputs are there
(a rerun after an interruption does only what is left), and
``--skip-bad-cases`` reports a case that fails (unreadable, blank modality,
anything) at the end instead of stopping the others; the exit status is then
1 when any case failed. Under torchrun a failed case stops only the process that
met it (none with ``--skip-bad-cases``), the others finish their cases, the first
process lists every failure, and the exit status is 0, since torchrun turns any
other into a traceback of its own. ``--skip-existing`` keeps an existing label map
only when it reads whole and has the case's shape.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

from omkit.cli import CLIError

# under torchrun, whose launcher prints a traceback for any other status, the failures reported on
# stderr are the outcome: exit 0 (the summary line says how many failed)
DISTRIBUTED_FAILURE_STATUS = 0
from omkit.cli.options import (add_device_argument, add_postprocess_arguments, add_precision_argument,
                               add_tile_arguments, add_tta_argument, inference_settings, postprocess_steps,
                               tile_settings, tta_setting)


def add_arguments(parser):
    parser.add_argument("-i", "--input", required=True, metavar="IN", help="a BraTS case folder or a folder of them")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("-m", "--model", required=True, action="append", metavar="MODEL",
                        help="model file (RUN/model.pt) or run folder (RUN; the folder of --fold all: every fold); repeat for "
                             "an ensemble (probabilities are averaged)")
    parser.add_argument("--expect-preset", metavar="PRESET", help="refuse model files that do not hold this preset")
    add_device_argument(parser)
    add_precision_argument(parser)
    parser.add_argument("--label-convention", choices=("2018", "2023", "2024"),
                        help="labels of the written maps: 2018 (4 = enhancing) or 2023/2024 (3 = enhancing; "
                             "no resection cavity is predicted); default: the convention of the input's file naming")
    parser.add_argument("--save-probabilities", action="store_true", help="also write OUT/<case-id>_probabilities.npz")
    parser.add_argument("--overlay", action="store_true",
                        help="also write OUT/<case-id>_overlay.png (FLAIR, ground truth when present, prediction)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out the cases whose outputs all exist (and write only the missing ones of the "
                             "others): a rerun goes on where an interrupted one stopped")
    parser.add_argument("--skip-bad-cases", action="store_true",
                        help="a case that fails is reported at the end instead of stopping the others "
                             "(exit status 1 when any failed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shard", choices=("queue", "round-robin"), default="queue",
                        help="under torchrun: queue (default): each process takes the next case no process has "
                             "claimed (claims in OUT/.omkit-claims); round-robin: fixed shares (case i to rank i mod N)")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="read each case only when the previous one is done (default: the next case is read "
                             "in the background while the current one computes)")
    parser.add_argument("--timings", metavar="FILE", help="write each process's seconds per stage (read, preprocess, "
                                                          "network, postprocess, write) to FILE (JSON)")
    add_postprocess_arguments(parser)
    add_tile_arguments(parser, dense=True)
    add_tta_argument(parser)


def shard(items: list, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items`` under torchrun (RANK / WORLD_SIZE)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return items[rank::world]


def gather_reports(report: dict) -> list[dict]:
    """Every process's ``report`` under torchrun (a gloo group for this
    alone, rank order), else ``[report]``."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return [report]
    import datetime

    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:  # processes finish their shares at different times: wait for the slowest
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, report)
    if owns:
        dist.destroy_process_group()
    return gathered


def _case_failure(case_dir: Path, exc: BaseException) -> str:
    """One line naming the case (the message of a CaseError names its file already)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if text.startswith(str(case_dir)) else f"{case_dir}: {type(exc).__name__}: {text}"


def _read_now(read, job) -> tuple:
    """``(case, error)`` of reading ``job`` in this thread (``--no-prefetch``)."""
    try:
        return read(job), None
    except Exception as exc:  # the case's failure, reported with it
        return None, exc


def output_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    return {
        "labels": out_dir / f"{case_id}.nii.gz",
        "probabilities": out_dir / f"{case_id}_probabilities.npz",
        "overlay": out_dir / f"{case_id}_overlay.png",
    }


def run(args) -> int:
    from tqdm.auto import tqdm

    from omkit.data import CaseError, find_cases
    from omkit.fileio import OutputExistsError, OutputWriteError, atomic_write_text, clean_stale_temporaries
    from omkit.inference.pipeline import (case_id_of, label_map_problem, load_for_prediction, write_label_map,
                                          write_probabilities)
    from omkit.inference.cohort import CaseQueue, prefetched
    from omkit.inference.segmenter import Segmenter
    from omkit.registry import PluginError
    from omkit.viz import save_overlay

    if args.force and args.skip_existing:
        raise CLIError("--force and --skip-existing exclude each other")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir}: exists and is not a folder")
    tiles = tile_settings(args)
    inference = inference_settings(args)
    tta = tta_setting(args)
    # under torchrun a failed case is this process's to report, not a reason to take the others down: it
    # stops taking cases (without --skip-bad-cases), the others finish theirs, and the first process reports
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    main_process = int(os.environ.get("RANK", 0)) == 0
    stop_after_failure = distributed and not args.skip_bad_cases
    all_cases = find_cases(args.input)
    # a shared queue under torchrun (its run id names the claims), else fixed shares
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if distributed and args.shard == "queue" else None
    cases = all_cases if run_id else shard(all_cases)  # before --skip-existing looks (others' outputs appear)
    clean_stale_temporaries(out_dir)  # left by a process killed while writing (a live writer's are kept)
    wanted = ["labels"] + (["probabilities"] if args.save_probabilities else []) + (["overlay"] if args.overlay else [])
    jobs, failures, already = [], [], 0
    for case_dir in cases:
        try:
            paths = output_paths(out_dir, case_id_of(case_dir))
        except CaseError as exc:
            if not args.skip_bad_cases and not distributed:
                raise
            failures.append(_case_failure(case_dir, exc))
            continue
        todo = [key for key in wanted if args.force or not paths[key].exists()]
        if not args.force and not args.skip_existing and len(todo) < len(wanted):
            raise CLIError(f"{next(paths[k] for k in wanted if k not in todo)}: exists; pass --force to overwrite it "
                           "or --skip-existing to keep it and do only what is missing")
        replace = set()
        if args.skip_existing and "labels" not in todo:  # kept only when it is a whole label map of this case
            problem = label_map_problem(paths["labels"], case_dir)
            if problem is not None:
                warnings.warn(f"{paths['labels']}: not a usable label map ({problem}); predicting the case again",
                              stacklevel=1)
                todo.insert(0, "labels")
                replace.add("labels")
        if not todo:
            # with the queue every process sees every case: the first one counts those already done
            already += 1 if not run_id or main_process else 0
            continue
        jobs.append((case_dir, paths, todo, replace))
    steps = postprocess_steps(args)
    # the one path from an image to labels, the one omkit.Segmenter users call
    segmenter = Segmenter.from_files(args.model, device=args.device, expect_preset=args.expect_preset, tiles=tiles,
                                     roi_dilation=args.roi_dilation, tta=tta, postprocess=steps,
                                     label_convention=args.label_convention, precision=args.precision, **inference)
    queue = CaseQueue(out_dir, run_id, [case_id_of(job[0]) for job in jobs]) if run_id else None
    by_id = {case_id_of(job[0]): job for job in jobs}
    claimed = (by_id[key] for key in queue) if queue else jobs
    progress = tqdm(total=len(jobs), desc="predict", unit="case",
                    disable=args.no_progress or not main_process or len(jobs) < 2)
    timings = dict.fromkeys(("read", "preprocess", "network", "postprocess", "write"), 0.0)

    def read(job):
        start = time.perf_counter()
        case = load_for_prediction(job[0], with_label=None if "overlay" in job[2] else False)
        timings["read"] += time.perf_counter() - start
        return case

    loaded = ((job, *_read_now(read, job)) for job in claimed) if args.no_prefetch else prefetched(claimed, read)
    if queue:  # then what others gave back or left, each read when the case before is done
        loaded = itertools.chain(loaded, ((by_id[key], *_read_now(read, by_id[key])) for key in queue.leftovers()))
    written = []
    for (case_dir, paths, todo, replace), case, read_error in loaded:
        progress.update(1)
        if stop_after_failure and failures:  # without --skip-bad-cases: stop here, the other processes go on
            if queue:
                queue.release()  # this case (read ahead) and any other claimed: the others take them
            break
        try:
            if read_error is not None:
                raise read_error
            result = segmenter.segment_case(case, return_probabilities="probabilities" in todo)
            for stage, seconds in result.timings.items():
                timings[stage] += seconds
            start = time.perf_counter()
            if "labels" in todo:
                write_label_map(result.labels, case, paths["labels"], segmenter.convention_for(case),
                                force=args.force or "labels" in replace)
            if "probabilities" in todo:
                write_probabilities(result.probabilities, paths["probabilities"], force=args.force)
            if "overlay" in todo:
                save_overlay(paths["overlay"], case.image[0], result.labels, case.label, title=case.case_id,
                             force=args.force)
            timings["write"] += time.perf_counter() - start
        except (KeyboardInterrupt, OutputExistsError, OutputWriteError, PluginError):  # every case would fail
            raise
        except Exception as exc:  # this case's failure, whatever it is
            if not args.skip_bad_cases and not distributed:
                hint = "; --skip-bad-cases goes on with the other cases" if len(all_cases) > 1 else ""
                raise CLIError(_case_failure(case_dir, exc) + hint) from exc
            failures.append(_case_failure(case_dir, exc))
            if queue:
                queue.done(case_id_of(case_dir))  # failed and reported: no other process takes it again
            continue
        if queue:
            queue.done(case_id_of(case_dir))
        written.append(case.case_id)
    progress.close()
    reports = gather_reports({"written": written, "already": already, "failed": failures, "timings": timings})
    if queue and main_process:
        queue.remove()  # every process has finished (gather_reports waited for them)
    if args.timings and main_process:
        record = {"processes": [r["timings"] for r in reports], "shard": "queue" if queue else "round-robin",
                  "prefetch": not args.no_prefetch}
        atomic_write_text(Path(args.timings), json.dumps(record, indent=2) + "\n")
    failed = [f for r in reports for f in r["failed"]]
    if main_process:
        counts = [len(r["written"]) for r in reports]
        per = f" ({len(reports)} processes: {' + '.join(map(str, counts))})" if len(reports) > 1 else ""
        done = sum(r["already"] for r in reports)
        print(f"wrote {sum(counts)} case(s) to {out_dir}{per}" + (f"; {done} had all their outputs already" if done else ""))
        if args.inference == "auto" and sum(counts):  # which mode the default chose, and why
            print(f"omkit predict: {segmenter.predictor.inference_note}")
        for line in failed:
            print(f"omkit predict: failed: {line}", file=sys.stderr)
        if failed:
            others = "the others were written" if args.skip_bad_cases else \
                "a process stopped at its failed case, the others finished their cases"
            print(f"omkit predict: {len(failed)} of {len(all_cases)} case(s) failed (listed above); {others}",
                  file=sys.stderr)
    if failed and distributed:
        return DISTRIBUTED_FAILURE_STATUS
    return 1 if failed else 0
