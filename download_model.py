"""Command line downloader: `python download_model.py TheBloke/starcoder-GPTQ[:branch]`."""

from __future__ import annotations

import argparse
import sys
import time

from backend import hub


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ProgressBar:
    """Draws hub.DownloadProgress reports as one redrawn line on stderr."""

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream, self.width, self.last = stream, width, 0.0

    def __call__(self, p: hub.DownloadProgress) -> None:
        now = time.monotonic()
        if not p.finished and now - self.last < 0.2:
            return
        self.last = now
        frac = p.done / p.total if p.total else 1.0
        bar = "#" * int(frac * self.width)
        eta = "--:--" if p.eta is None else time.strftime("%H:%M:%S", time.gmtime(p.eta))
        line = (f"\r[{bar:<{self.width}}] {frac:4.0%} {_size(p.done)}/{_size(p.total)} "
                f"{_size(p.speed)}/s ETA {eta} files {p.files_done}/{p.files_total} {p.filename[:30]}")
        self.stream.write(line.ljust(110))
        if p.finished:
            self.stream.write("\n")
        self.stream.flush()


def _print_listing(listing: hub.RepoListing) -> None:
    print(f"{listing.ref.repo_id} ({listing.ref.branch}) at commit {listing.commit}")
    for f in listing.files:
        print(f"  {_size(f.size):>10}  {f.path}")
    print(f"  {_size(listing.total_size):>10}  total, {len(listing.files)} files")
    if listing.skipped:
        print("  skipped: " + ", ".join(f.path for f in listing.skipped))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a model from the Hugging Face Hub into models/.")
    parser.add_argument("repo", help="user/model, user/model:branch or a huggingface.co URL")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--specific-file", action="append", default=[], metavar="NAME",
                        help="fetch only this file (repeatable)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--list", action="store_true", help="show the files and sizes, download nothing")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .bin/.pt weights when no safetensors exist (they can run code)")
    parser.add_argument("--allow-remote-code", action="store_true", help="also fetch *.py files")
    parser.add_argument("--no-weights", action="store_true",
                        help="tokenizer and config files only, for a model that a remote vLLM engine serves")
    args = parser.parse_args(argv)
    options = dict(token=args.token, allow_pickle=args.allow_pickle, allow_remote_code=args.allow_remote_code)
    job = None
    try:
        if args.list:
            listing = hub.list_files(args.repo, **options)
            _print_listing(hub.without_weights(listing) if args.no_weights else listing)
            return 0
        job = hub.start_download(args.repo, args.models_dir, on_progress=ProgressBar(),
                                 specific_files=args.specific_file, threads=args.threads,
                                 weights=not args.no_weights, **options)
        while (result := job.wait(0.5)) is None:
            pass
        note = "already up to date" if result.up_to_date else f"{len(result.files)} files"
        print(f"{result.path} ({note}, commit {result.commit})")
        return 0
    except hub.DownloadError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if job is not None:
            job.cancel()
            try:
                job.wait()
            except hub.DownloadError:
                pass  # the cancellation itself; partial files stay staged for the next run
        print("\ncancelled; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
