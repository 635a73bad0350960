"""``lmstation download REPO``: a model from Hugging Face or ModelScope into the library, with a progress bar.
Ctrl-C pauses; running the same command again resumes from the partial files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.downloader import DownloadManager, DownloadRequest, DownloadSnapshot, FileChoice, JobState


def run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    request = DownloadRequest(
        repo=args.repo, source=args.source, revision=args.revision, endpoint=args.endpoint,
        dest=Path(args.out).expanduser() if args.out else None,
        choice=FileChoice(variant=args.variant, formats=tuple(args.format or ()), everything=args.all),
    )
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=args.repo, dynamic_ncols=True)

    def show(snapshot: DownloadSnapshot) -> None:
        bar.total = snapshot.total_bytes or None
        bar.n = snapshot.done_bytes
        bar.set_postfix_str(snapshot.current_file or snapshot.state.value, refresh=False)
        bar.refresh()

    with DownloadManager(on_progress=show) as manager:
        job = manager.add(request)
        try:
            while job.wait(0.5).state in (JobState.QUEUED, JobState.RUNNING):
                pass
        except KeyboardInterrupt:
            job.pause()
            job.wait()
            bar.close()
            print(f"paused; run the same command again to resume {args.repo}", file=sys.stderr)
            return 130
    bar.close()
    done = job.snapshot()
    if done.state is not JobState.DONE:
        print(f"error: {done.error}", file=sys.stderr)
        return 1
    print(f"{args.repo} is in {done.dest}")
    return 0
