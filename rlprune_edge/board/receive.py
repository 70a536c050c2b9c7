"""Receive the runner folder and models on the board (run as ``python3 -c <this file's text> ARGS``).

The host sends it before the runner when something is missing (the runner may not be there yet,
so it travels as the command's text). It reads a tar stream from stdin into a temp dir under the
work dir, verifies each file's sha256, then publishes atomically (files with os.replace, the runner
folder by renaming a complete temp dir). Then ``blobs/`` is trimmed to KEEP_BYTES, oldest first,
sparing what this call uses (``keep:<rel>``, whose mtime is refreshed), so a long search cannot fill
the board's disk with candidates.

    argv: WORK_DIR KEEP_BYTES ITEM...  with ITEM = "file:<rel>:<sha256>", "dir:<rel>" or "keep:<rel>"

Exit 1 (and nothing published) on a checksum mismatch. Python >= 3.6, stdlib only.
"""

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile


def file_sha256(path):
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish(work, items):
    """Extract stdin's tar into a temp dir, check and move the items in place; the absolute paths used."""
    tmp = tempfile.mkdtemp(dir=work, prefix=".incoming-")
    used = set()
    try:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tf:
            tf.extractall(tmp, **kw)
        for item in items:
            parts = item.split(":", 2)
            src, dst = os.path.join(tmp, parts[1]), os.path.join(work, parts[1])
            used.add(os.path.abspath(dst))
            if parts[0] == "keep":
                if os.path.exists(dst):
                    os.utime(dst, None)
            elif parts[0] == "file":
                if file_sha256(src) != parts[2]:
                    sys.stderr.write(f"checksum mismatch for {parts[1]}\n")
                    sys.exit(1)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
            else:
                try:
                    os.rename(src, dst)
                except OSError:
                    if not os.path.isfile(os.path.join(dst, "runner.py")):
                        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return used


def trim_blobs(work, keep_bytes, used):
    """Remove the least recently used blobs until they take at most `keep_bytes`, sparing `used`."""
    blob_dir = os.path.join(work, "blobs")
    blobs = []
    for name in os.listdir(blob_dir) if os.path.isdir(blob_dir) else []:
        path = os.path.abspath(os.path.join(blob_dir, name))
        try:
            st = os.stat(path)
        except OSError:
            continue
        blobs.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in blobs)
    for _, size, path in sorted(blobs):
        if total <= keep_bytes:
            break
        if path not in used:
            try:
                os.remove(path)
                total -= size
            except OSError:
                pass


def main(argv):
    work, keep_bytes, items = argv[0], int(argv[1]), argv[2:]
    os.makedirs(work, exist_ok=True)
    trim_blobs(work, keep_bytes, publish(work, items))


if __name__ == "__main__":
    main(sys.argv[1:])
