"""Sweep the tokenizer over a folder of odd and broken JPEGs (../shared/robust-jpeg), crash-proof.

Every file, under each configuration, must give a correct round trip or an error naming the file
and the reason. libjpeg can crash the process on hostile input, so the files are tokenized in a worker
process; a crash or a hang is recorded against the file being worked on and the worker restarts after it.
Which files round-trip under which configuration is pinned in robust_jpeg_ok.tsv (config, file).

    python tests/robust_sweep.py [folder]      # prints a summary and every file that is not clean
    python tests/robust_sweep.py --write-ok    # rewrites robust_jpeg_ok.tsv from a sweep

The folder is ../shared/robust-jpeg next to the repository, or $DCTGPT_ROBUST_JPEG.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FOLDER = Path(os.environ.get("DCTGPT_ROBUST_JPEG", ROOT.parent / "shared" / "robust-jpeg"))
SKIP_NAMES = {"README.md", "MANIFEST.tsv"}
CONFIGS = {"as-is": dict(quality=None, size=None), "q25-32x32": dict(quality=25, size=(32, 32))}
OK_LIST = TESTS / "robust_jpeg_ok.tsv"
# what an error may say (after naming the file): the reasons the tokenizer gives for what it refuses
REASONS = re.compile("|".join([
    r"truncated", r"not a JPEG", r"not a complete JPEG", r"not a readable image", r"could not decode",
    r"lossless JPEG", r"sampling factors", r"quantization table", r"components? .*not supported",
    r"over max_pixels", r"libjpeg could not read", r"coefficients outside", r"more than one frame header",
    r"bit quantization tables", r"zero size", r"RGB JPEG", r"-bit JPEG is not supported",
    r"hierarchical JPEG", r"arithmetic"]))
GRAMMAR_MAX_TOKENS = 30_000     # walking longer streams through the Python grammar is slow


def files(folder: Path = FOLDER) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix()
                  not in SKIP_NAMES)


# -- worker side --------------------------------------------------------------------------------------

def check(tok, path: str) -> dict:
    """Tokenize one file; classify the outcome."""
    import numpy as np
    from jpeg_reference import reference
    from PIL import Image

    from tokenizer import TokenizerError

    try:
        seq = tok.encode(path)
    except (TokenizerError, ValueError, FileNotFoundError) as e:
        kind = "error" if path in str(e) else "unnamed_error"
        return {"result": kind, "type": type(e).__name__, "message": str(e).replace(path, "<file>")[:300]}
    except Exception as e:   # any other exception type is a bug
        return {"result": "bad", "type": type(e).__name__, "message": str(e)[:300]}
    try:
        prepared = tok.to_jpeg(path)
        if tok.config.quality is None:
            assert prepared == Path(path).read_bytes(), "quality=None did not keep the file"
        jpeg = tok.decode(seq)
        reference(jpeg).assert_equal(reference(prepared), "decode(encode(file)) vs libjpeg's reading")
        im = Image.open(io.BytesIO(jpeg))
        im.load()
        if len(seq) <= GRAMMAR_MAX_TOKENS:
            g = tok.grammar()
            pos = np.stack([g.push(int(t)) for t in seq.ids])
            assert g.done and np.array_equal(pos, seq.positions), "grammar positions differ"
    except Exception as e:
        return {"result": "wrong", "type": type(e).__name__, "message": str(e)[:300]}
    return {"result": "ok", "tokens": len(seq)}


def worker(paths: list[str]) -> None:
    from tokenizer import JpegDctConfig, JpegDctTokenizer

    toks = {label: JpegDctTokenizer(JpegDctConfig(**c)) for label, c in CONFIGS.items()}
    for path in paths:
        print(json.dumps({"start": path}), flush=True)
        for label, tok in toks.items():
            print(json.dumps({"file": path, "config": label, **check(tok, path)}), flush=True)
        print(json.dumps({"end": path}), flush=True)


# -- driver side --------------------------------------------------------------------------------------

def sweep(paths: list[Path], file_timeout: float = 60.0) -> list[dict]:
    """One record per (file, config) from worker processes; crashes and hangs become records too."""
    records: list[dict] = []
    todo = [str(p) for p in paths]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    while todo:
        with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("w", suffix=".json") as lst:
            json.dump(todo, lst)
            lst.flush()
            proc = subprocess.Popen([sys.executable, __file__, "--worker", lst.name], stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=env, cwd=ROOT)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)],
                             daemon=True).start()
            current = None
            while True:
                try:
                    line = lines.get(timeout=file_timeout)
                except queue.Empty:
                    proc.kill()
                    records.append({"file": current, "result": "hang", "message": f">{file_timeout}s"})
                    break
                if line is None:
                    proc.wait()
                    if current is not None:
                        records.append({"file": current, "result": "crash",
                                        "message": f"worker died (exit {proc.returncode})"})
                    break
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                elif "end" in msg:
                    todo.remove(msg["end"])
                    current = None
                else:
                    records.append(msg)
            proc.wait()
            if current is not None:
                todo.remove(current)
            elif proc.returncode != 0 and todo:
                raise RuntimeError(f"sweep worker failed before any file (exit {proc.returncode})")
    return records


def ok_pairs(records: list[dict], folder: Path = FOLDER) -> set[tuple[str, str]]:
    """(config, file relative to the folder) of every clean round trip."""
    return {(r["config"], Path(r["file"]).relative_to(folder).as_posix()) for r in records
            if r["result"] == "ok"}


def read_ok_list(path: Path = OK_LIST) -> set[tuple[str, str]]:
    return {tuple(line.split("\t")) for line in path.read_text().splitlines() if line}


def write_ok_list(pairs: set[tuple[str, str]], path: Path = OK_LIST) -> None:
    path.write_text("".join(f"{config}\t{file}\n" for config, file in sorted(pairs)))


def summary(records: list[dict]) -> str:
    counts = Counter((r.get("config", "-"), r["result"]) for r in records)
    lines = [f"{n:4d}  {result:14s} {config}" for (config, result), n in sorted(counts.items())]
    for r in records:
        if r["result"] not in ("ok", "error"):
            lines.append(f"  {r['result']}: {r['file']} [{r.get('config', '')}] {r.get('message', '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.path[:0] = [str(ROOT), str(TESTS)]
        worker(json.loads(Path(sys.argv[2]).read_text()))
    else:
        args = [a for a in sys.argv[1:] if a not in ("-v", "--write-ok")]
        folder = Path(args[0]) if args else FOLDER
        recs = sweep(files(folder))
        print(summary(recs))
        if "--write-ok" in sys.argv:
            write_ok_list(ok_pairs(recs, folder))
            print(f"wrote {OK_LIST}")
        if "-v" in sys.argv:
            for r in recs:
                if r["result"] == "error":
                    print(f"  error: {r['file']} [{r['config']}] {r['message']}")
