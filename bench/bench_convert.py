"""Wall time and peak memory of ``deberta-xf convert`` on a deberta-v2-xlarge-sized checkpoint.

    python bench/bench_convert.py [--workdir /tmp] [--layers 24] [--repeat 3] [--verify] [--verify-only]
                                  [--src DIR] [--keep] [--json out.json]

Generates a synthetic checkpoint with the published deberta-v2-xlarge config (/work/shared/reference/configs, or
``--config``): 884.6M parameters, fp32, random normal(0, 0.02) weights, ~3.5 GB ``model.safetensors``, under a
temporary directory (``--layers`` shrinks it for a quick run). Then, each step in its own process:

  copy      a plain file copy of model.safetensors (shutil.copyfile, copied inside the kernel), and the same
            through user space (64 MiB reads and writes): the floors for moving these bytes
  trip 1    deberta-xf convert SRC A --to tf --no-verify     (model.safetensors  -> tf_model.h5)
            deberta-xf convert A   B --to flax               (tf_model.h5        -> flax_model.msgpack)
            deberta-xf convert B   C --to torch              (flax_model.msgpack -> model.safetensors)
  trip 2    the same through --format bin, keras_h5, safetensors (pytorch_model.bin, model.weights.h5)

(each format read once and written once; a step's input is deleted after it, so the disk holds at most the
source and two conversions)
and reports for each the wall time and the peak resident memory of that process and the processes it runs
(:func:`measure`: ``ru_maxrss`` from ``os.wait4``, and the sum over the processes alive at once, sampled), against
the checkpoint size and the copy. Targets: peak RSS < 0.25 x checkpoint size for the
streamed formats, wall time < 3 x the copy. Each round trip's tensors are checked to equal the source bit for bit
afterwards. ``--verify`` also times a verified conversion of model.safetensors to each format (``--verify-only``:
only those; ``--src DIR``: of that checkpoint instead of a generated one).
The page cache is warm for every step (the source was just written) and dirty pages are flushed (os.sync)
before each one; the time does not include flushing a step's own output to disk. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
XLARGE = "/work/shared/reference/configs/deberta-v2-xlarge.json"
CLI = [sys.executable, "-m", "deberta_xf"]
# The verified conversions of model.safetensors (--verify): --to, --format, the file written.
VERIFIED = (("torch", "safetensors", "model.safetensors"), ("torch", "bin", "pytorch_model.bin"),
            ("tf", "tf_h5", "tf_model.h5"), ("tf", "keras_h5", "model.weights.h5"),
            ("flax", "msgpack", "flax_model.msgpack"))


# The conversions timed (--to, --format, the file written): two round trips from model.safetensors, so that every
# format is read once and written once (the last step of each writes safetensors again, compared with the source).
ROUND_TRIPS = ((("tf", "tf_h5", "tf_model.h5"), ("flax", "msgpack", "flax_model.msgpack"),
                ("torch", "safetensors", "model.safetensors")),
               (("torch", "bin", "pytorch_model.bin"), ("tf", "keras_h5", "model.weights.h5"),
                ("torch", "safetensors", "model.safetensors")))

# What any tool that reads and writes the bytes itself has to do at least (shutil.copyfile copies inside the kernel).
USERSPACE_COPY = """
import sys
buf = bytearray(64 << 20)
view = memoryview(buf)
with open(sys.argv[1], "rb", buffering=0) as src, open(sys.argv[2], "wb", buffering=0) as dst:
    while n := src.readinto(buf):
        dst.write(view[:n])
"""


def make_checkpoint(directory: str, config_path: str, layers: int | None) -> int:
    """Write config.json and a random fp32 model.safetensors (streamed); return the parameter count."""
    import numpy as np

    from deberta_xf.formats import TensorInfo, write_weights
    from deberta_xf import schema
    from deberta_xf.configuration import DebertaV2Config

    with open(config_path, encoding="utf-8") as f:
        data = json.load(f)
    if layers is not None:
        data["num_hidden_layers"] = layers
    data["architectures"] = ["DebertaV2Model"]
    config = DebertaV2Config.from_dict(data)
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    shapes = schema.expected_shapes(config, "base")
    infos = {name: TensorInfo(shape, np.dtype(np.float32)) for name, shape in shapes.items()}
    rng = np.random.default_rng(0)

    def produce(name: str) -> np.ndarray:
        if name.endswith("LayerNorm.weight"):
            return np.ones(infos[name].shape, np.float32)
        array = rng.standard_normal(infos[name].shape, dtype=np.float32)
        array *= 0.02
        return array

    write_weights(os.path.join(directory, "model.safetensors"), infos, produce, format="safetensors")
    return sum(int(np.prod(s)) for s in shapes.values())


def _tree(pid: int) -> dict[int, list[int]]:
    """``pid`` and every process below it, each with its children (from /proc/PID/task/TID/children)."""
    tree, queue = {}, [pid]
    while queue:
        current = queue.pop()
        tree[current] = []
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as f:
                    tree[current] += [int(child) for child in f.read().split()]
        except OSError:  # it ended meanwhile
            continue
        queue += tree[current]
    return tree


def _memory_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and its peak so far (VmHWM), KiB; empty once it has ended."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS:", "VmHWM:"))}
    except OSError:
        return {}


class TreeMemory(threading.Thread):
    """Samples a process tree every ``interval`` s; ``peak_kib``: the largest sum over the processes alive at once
    of what each holds: its peak so far (VmHWM) for a process without children, its resident memory now (VmRSS)
    for one that has children (it waits for them: what it holds now, it holds during their peaks)."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            total = 0
            for pid, children in _tree(self.pid).items():
                memory = _memory_kib(pid)
                total += memory.get("VmRSS" if children else "VmHWM", 0)
            self.peak_kib = max(self.peak_kib, total)


def measure(command: list[str]) -> tuple[float, int, str]:
    """Run one command in its own process: (wall seconds, peak RSS bytes of its process tree, its output).

    The peak is the larger of ``ru_maxrss`` from ``os.wait4`` (the process's peak, or its largest waited-for
    child's: Linux reports the maximum, not the sum) and :class:`TreeMemory`'s samples, which add up what the
    processes alive at the same time hold (the command and the children it runs and waits for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    tree = TreeMemory(proc.pid)
    tree.start()
    out = proc.stdout.read().decode("utf-8", "replace")
    tree.stopped.set()  # the output is closed: the tree has (about) ended; the last samples are in
    tree.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}:\n{out}")
    return wall, max(usage.ru_maxrss, tree.peak_kib) * 1024, out  # ru_maxrss and VmHWM are in KiB on Linux


def tensors_equal(a_path: str, b_path: str) -> list[str]:
    """Names of the tensors that differ between two weights files (one tensor in memory at a time)."""
    import numpy as np

    from deberta_xf.formats import open_weights

    bad = []
    with open_weights(a_path) as a, open_weights(b_path) as b:
        if set(a.keys()) != set(b.keys()):
            return sorted(set(a.keys()) ^ set(b.keys()))
        for name in a.keys():
            if not np.array_equal(a.read(name).view(np.uint8), b.read(name).view(np.uint8)):
                bad.append(name)
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=XLARGE, help="model config (default: deberta-v2-xlarge)")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (a quicker run)")
    parser.add_argument("--workdir", default=None, help="where the temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--verify", action="store_true", help="also time a verified conversion of model.safetensors "
                                                              "to each format")
    parser.add_argument("--verify-only", action="store_true", help="only the copies and the verified conversions")
    parser.add_argument("--src", help="convert this checkpoint directory (config.json + model.safetensors) instead "
                                      "of generating one")
    parser.add_argument("--repeat", type=int, default=1, help="run each step this many times; the table shows the "
                                                              "fastest run and the largest peak RSS")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--json", help="also write the figures to this file")
    # internal: the heavy work runs in child processes, so that this (small) process's memory does not count in
    # theirs (Linux carries the parent's peak RSS over fork + exec into the child's ru_maxrss)
    parser.add_argument("--_generate", nargs=2, metavar=("DIR", "LAYERS"), help=argparse.SUPPRESS)
    parser.add_argument("--_compare", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._generate:
        directory, layers = args._generate
        print(make_checkpoint(directory, args.config, int(layers) if layers != "-" else None))
        return 0
    if args._compare:
        bad = tensors_equal(*args._compare)
        print("every tensor bit-identical" if not bad else f"{len(bad)} tensors differ: {bad[:5]}")
        return 0 if not bad else 1

    work = tempfile.mkdtemp(prefix="bench_convert.", dir=args.workdir)
    try:
        me = [sys.executable, os.path.abspath(__file__), "--config", args.config]
        if args.src:
            src = os.path.abspath(args.src)
            src_file = os.path.join(src, "model.safetensors")
            size = os.path.getsize(src_file)
            n_params = size // 4  # fp32
            print(f"checkpoint {src}: {size / 1e9:.2f} GB", flush=True)
        else:
            src = os.path.join(work, "src")
            wall, _, out = measure(me + ["--_generate", src, str(args.layers) if args.layers else "-"])
            n_params = int(out.strip().splitlines()[-1])
            src_file = os.path.join(src, "model.safetensors")
            size = os.path.getsize(src_file)
            print(f"synthetic checkpoint: {n_params / 1e6:.1f}M parameters, fp32, {size / 1e9:.2f} GB "
                  f"({wall:.1f} s to generate) in {work}", flush=True)

        steps = [
            ("python + imports (convert --help)", CLI + ["convert", "--help"], None, None),
            ("copy model.safetensors", [sys.executable, "-c", "import shutil, sys; shutil.copyfile(*sys.argv[1:])",
                                        src_file, os.path.join(work, "copy.safetensors")], None, None),
            ("copy through user space (64 MiB reads)", [sys.executable, "-c", USERSPACE_COPY, src_file,
                                                        os.path.join(work, "copy.safetensors")], None, None),
        ]
        if not args.verify_only:  # the two round trips: each format read once and written once
            for number, trip in enumerate(ROUND_TRIPS, 1):
                previous, before = src, "model.safetensors"
                for to, fmt, filename in trip:
                    directory = os.path.join(work, f"trip{number}-{fmt}")
                    steps.append((f"{before} -> {filename}", CLI + ["convert", previous, directory, "--to", to,
                                                                     "--format", fmt, "--no-verify"],
                                  os.path.relpath(os.path.join(directory, filename), work),
                                  None if previous == src else previous))  # deleted after the step
                    previous, before = directory, filename
        if args.verify or args.verify_only:
            for to, fmt, filename in VERIFIED:
                steps.append((f"safetensors -> {filename}, verified", CLI + [
                    "convert", src, os.path.join(work, f"{fmt}-verified"), "--to", to, "--format", fmt],
                    f"{fmt}-verified/{filename}", None))
        rows = []
        copy_wall = None
        for label, command, output, consumed in steps:
            walls, rss = [], 0
            for attempt in range(args.repeat):
                if output and attempt:
                    shutil.rmtree(os.path.join(work, os.path.dirname(output)))
                os.sync()  # start each run with no dirty pages of the previous one still being written back
                run_wall, run_rss, out = measure(command)
                walls.append(run_wall)
                rss = max(rss, run_rss)
                if label.startswith("copy"):
                    os.unlink(os.path.join(work, "copy.safetensors"))
            wall = min(walls)
            written = os.path.getsize(os.path.join(work, output)) if output else None
            if consumed:  # the step's input, written by the step before: no longer needed
                shutil.rmtree(consumed)
            if label.startswith("copy"):
                copy_wall = copy_wall or wall  # the ratios are to shutil.copyfile
            rows.append({"step": label, "wall_s": wall, "wall_s_all": walls, "peak_rss_bytes": rss,
                         "written_bytes": written})
            print(f"  {label}: {' / '.join(f'{w:.1f}' for w in walls)} s, peak RSS {rss / 2**20:.0f} MiB", flush=True)
            if "verified" in label:
                print("    " + "\n    ".join(line for line in out.splitlines() if "verif" in line or "tensors:" in line))

        bad = False
        for number, trip in enumerate([] if args.verify_only else ROUND_TRIPS, 1):
            last = os.path.join(work, f"trip{number}-{trip[-1][1]}", trip[-1][2])
            compare = subprocess.run(me + ["--_compare", src_file, last], capture_output=True, text=True)
            bad = bad or compare.returncode != 0
            print(f"round trip safetensors -> {' -> '.join(fmt for _, fmt, _ in trip)}: "
                  f"{compare.stdout.strip() or compare.stderr}")

        print(f"\ncheckpoint {size / 1e9:.2f} GB ({n_params / 1e6:.1f}M params, fp32); targets: peak RSS < "
              f"0.25 x size = {0.25 * size / 2**20:.0f} MiB, wall < 3 x copy")
        header = f"{'step':<44} {'wall s':>7} {'x copy':>7} {'peak RSS MiB':>13} {'x size':>7}"
        print(header)
        print("-" * len(header))
        for row in rows:
            ratio = f"{row['wall_s'] / copy_wall:.1f}" if copy_wall else "-"
            print(f"{row['step']:<44} {row['wall_s']:>7.1f} {ratio:>7} {row['peak_rss_bytes'] / 2**20:>13.0f} "
                  f"{row['peak_rss_bytes'] / size:>7.3f}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"checkpoint_bytes": size, "parameters": n_params, "round_trip_identical": not bad,
                           "steps": rows}, f, indent=2)
        return 0 if not bad else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
