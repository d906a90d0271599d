"""The baseline for `render`'s writes: copy a finished render output, durably, the naive way.

    python bench/naive_writer.py SRC DST [--dir-fsync file|dir|none] [--plain]

Reads every file under SRC (a lotdeploy render output: one directory per node) into memory
first, then recreates it under DST: same names, same bytes, same file and directory modes.
Nothing is compiled; this is only the cost of putting the files on disk.

Per file, with the fsync discipline lotdeploy uses: a temporary file in the same directory
(mkstemp, private until chmod), write, fsync, rename over the target. Then:
  --dir-fsync file  one directory fsync after every file (the naive way; the default);
  --dir-fsync dir   one directory fsync per directory, after all its renames (batched);
  --dir-fsync none  no directory fsync.
--plain writes each file directly with no temporary, no rename and no fsync at all: the
page-cache floor, for information (not durable).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

Tree = list[tuple[str, int, list[tuple[str, bytes, int]]]]


def load(src: Path) -> Tree:
    """(relative directory, mode, [(file name, bytes, mode)]) for every directory under src."""
    tree: Tree = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        directory = Path(root)
        entries = []
        for name in sorted(files):
            path = directory / name
            entries.append((name, path.read_bytes(), os.stat(path).st_mode & 0o7777))
        tree.append((str(directory.relative_to(src)), os.stat(directory).st_mode & 0o7777, entries))
    return tree


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable(tree: Tree, dst: Path, dir_fsync: str) -> None:
    for relative, dir_mode, entries in tree:
        directory = dst / relative
        directory.mkdir(mode=dir_mode, exist_ok=True)
        os.chmod(directory, dir_mode)
        for name, payload, mode in entries:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / name)
            if dir_fsync == "file":
                fsync_dir(directory)
        if dir_fsync == "dir" and entries:
            fsync_dir(directory)


def plain(tree: Tree, dst: Path) -> None:
    for relative, dir_mode, entries in tree:
        directory = dst / relative
        directory.mkdir(mode=dir_mode, exist_ok=True)
        os.chmod(directory, dir_mode)
        for name, payload, mode in entries:
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.chmod(directory / name, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--dir-fsync", choices=("file", "dir", "none"), default="file")
    parser.add_argument("--plain", action="store_true", help="no temporary, no fsync")
    args = parser.parse_args()
    tree = load(args.src)
    if args.plain:
        plain(tree, args.dst)
    else:
        durable(tree, args.dst, args.dir_fsync)


if __name__ == "__main__":
    main()
