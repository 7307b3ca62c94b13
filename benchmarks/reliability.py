"""Kill a training run with SIGKILL at random moments, corrupt its checkpoints, and count what survived.

    python benchmarks/reliability.py [--kills 20] [--corruptions 20]

Writes the figures into docs/reliability.md between the `reliability:start/end` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from sections import put  # noqa: E402
from tests.test_reliability import CONFIG  # noqa: E402  (the same run the tests kill)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(args, cwd, wait=None):
    process = subprocess.Popen([sys.executable, "-m", "skiptrain", "train", *args], cwd=cwd, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=wait)
        return process.returncode, False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None, True


def kills(root: Path, count: int, rng: random.Random) -> dict:
    train(["c.yaml", "--run-dir", "straight", "-q"], root)
    reference = torch.load(root / "straight/checkpoints/last.pt", weights_only=True)["model"]
    args, killed, runs = ["c.yaml", "--run-dir", "killed", "-q"], 0, 0
    while True:
        code, was_killed = train(args, root, rng.uniform(3.5, 10.0) if killed < count else None)
        runs += 1
        killed += was_killed
        if code == 0:
            break
        has_checkpoint = any((root / "killed/checkpoints").glob("*.pt"))
        args = (["--resume", "killed", "--run-dir", "killed", "-q"] if has_checkpoint
                else ["c.yaml", "--run-dir", "killed", "-q", "--force"])
    final = torch.load(root / "killed/checkpoints/last.pt", weights_only=True)["model"]
    epochs = [json.loads(line)["epoch"] for line in (root / "killed/metrics.jsonl").read_text().splitlines()]
    return {"kills": killed, "processes": runs, "bitwise_identical": all(torch.equal(reference[k], final[k])
                                                                         for k in reference),
            "epochs_logged_once": epochs == sorted(set(epochs)) == [1, 2, 3]}


def corruptions(root: Path, count: int, rng: random.Random) -> dict:
    from skiptrain import checkpoint
    from skiptrain.errors import CheckpointError

    source = root / "straight/checkpoints/last.pt"
    detected = 0
    for i in range(count):
        data = bytearray(source.read_bytes())
        how = i % 3
        if how == 0:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)  # one flipped bit
        elif how == 1:
            data = data[: rng.randrange(len(data))]  # truncated
        else:
            start = rng.randrange(len(data) - 64)
            data[start:start + 64] = bytes(64)  # a zeroed block
        target = root / f"corrupt{i}" / "last.pt"
        target.parent.mkdir()
        target.write_bytes(bytes(data))
        shutil.copy(checkpoint.checksum_path(source), checkpoint.checksum_path(target))
        try:
            checkpoint.read(target)
        except CheckpointError:
            detected += 1
    return {"corruptions": count, "detected": detected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--corruptions", type=int, default=30)
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    rng = random.Random(0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "c.yaml").write_text(CONFIG)
        killed = kills(root, args.kills, rng)
        corrupt = corruptions(root, args.corruptions, rng)
    section = "\n".join([
        "<!-- reliability:start -->",
        f"Measured by `python benchmarks/reliability.py` on {time.strftime('%Y-%m-%d')} "
        f"({os.cpu_count()} CPU cores, torch {torch.__version__}, {time.time() - started:.0f} s):",
        "",
        "| what | figure |",
        "|---|---|",
        f"| SIGKILLs at random moments of one 3-epoch run | {killed['kills']} ({killed['processes']} processes) |",
        f"| final weights bitwise equal to the uninterrupted run | {'yes' if killed['bitwise_identical'] else '**no**'} |",
        f"| each epoch exactly once in metrics.jsonl | {'yes' if killed['epochs_logged_once'] else '**no**'} |",
        f"| corrupted checkpoints (bit flips, truncations, zeroed blocks) detected | "
        f"{corrupt['detected']} of {corrupt['corruptions']} |",
        "<!-- reliability:end -->",
    ])
    put(Path(args.output), "<!-- reliability:start -->", "<!-- reliability:end -->", section,
        new_page="# Reliability\n")
    print(section)


if __name__ == "__main__":
    main()
