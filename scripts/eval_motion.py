"""Score motion detection against per-pixel ground truth (SBI2015 sequences in ../shared/datasets).

Pixels inside the sequence's ROI.bmp and its temporalROI frame range are scored: ground truth 255 is
positive, 0 negative, 170 (unknown) ignored. TP/FP/FN are summed over the frames, then precision, recall
and F1. Two detectors run on the same frames:

- `ours`: edge_agent's detector through the same path as `edge-agent motion-replay` (privacy masker,
  MotionDetector), its foreground scaled up to the source resolution as `--write-masks` writes it;
- `mog2`: the plain baseline the issue names: OpenCV `createBackgroundSubtractorMOG2(detectShadows=True)`
  on the full-resolution frames, shadows counted as background, then a 3x3 opening and a 3x3 dilation.

Usage:
  eval_motion.py                          # the table for every dev sequence, ours vs mog2
  eval_motion.py --replay-dir DIR --sequence CAVIAR2   # score an existing motion-replay output
  eval_motion.py --stress                 # synthetic stress clips (camera/motion_clips.py): false alarms
  eval_motion.py --json out.json          # also write the figures as JSON

Stress clips: the share of frames raising motion on clips with nothing moving (noise, lighting steps, a
street light, shake, swaying trees, rain), and on the trees clip with a walker entering: frames from its
entry to the first motion, and pixel F1. MOG2 "raises motion" when a blob of at least min_area remains.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from edge_agent.camera.motion_clips import CLIPS, ClipSpec  # noqa: E402
from edge_agent.camera.privacy import PrivacyMasker  # noqa: E402
from edge_agent.commands.motion_replay import Replayer, ReplaySettings, full_size_mask  # noqa: E402
from edge_agent.formats.config import MotionConfig  # noqa: E402

DATASET = PROJECT.parent / "shared" / "datasets" / "sbi2015"
SEQUENCES = ("CAVIAR2", "IBMtest2", "HallAndMonitor")
FPS = 25.0


@dataclass
class Counts:
    """Pixel counts summed over the scored frames."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    frames: int = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray, roi: np.ndarray) -> None:
        """Score one frame: prediction and truth are HxW uint8 at the same size."""
        positive = (truth == 255) & roi
        negative = (truth == 0) & roi
        predicted = prediction > 0
        self.tp += int(np.count_nonzero(predicted & positive))
        self.fp += int(np.count_nonzero(predicted & negative))
        self.fn += int(np.count_nonzero(~predicted & positive))
        self.frames += 1

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            **{k: v for k, v in asdict(self).items()},
        }


@dataclass(frozen=True)
class Sequence:
    """One ground-truth sequence on disk."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def input_pattern(self) -> str:
        first = sorted((self.root / "input").iterdir())[0]
        return str(self.root / "input" / f"in%06d{first.suffix}")

    def frames(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(self.input_pattern())
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield image
        finally:
            capture.release()

    def scored_range(self) -> tuple[int, int]:
        first, last = (self.root / "temporalROI.txt").read_text().split()[:2]
        return int(first), int(last)

    def roi(self) -> np.ndarray:
        roi = cv2.imread(str(self.root / "ROI.bmp"), cv2.IMREAD_GRAYSCALE)
        if roi is None:
            raise FileNotFoundError(self.root / "ROI.bmp")
        return roi > 0

    def truth(self, index: int) -> np.ndarray:
        path = self.root / "groundtruth" / f"gt{index:06d}.png"
        truth = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if truth is None:
            raise FileNotFoundError(path)
        return truth


def score(sequence: Sequence, masks: Iterator[tuple[int, np.ndarray]]) -> Counts:
    """Sum the counts over the sequence's scored frames; `masks` yields (frame index, mask) in order."""
    first, last = sequence.scored_range()
    roi = sequence.roi()
    counts = Counts()
    for index, mask in masks:
        if first <= index <= last:
            truth = sequence.truth(index)
            if mask.shape != truth.shape:
                mask = cv2.resize(mask, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_NEAREST)
            counts.add(mask, truth, roi)
    return counts


def ours(sequence: Sequence, motion: MotionConfig | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Our detector's masks at source resolution, through the replay path (no privacy masks)."""
    settings = ReplaySettings("eval", PrivacyMasker([]), motion or MotionConfig(), FPS)  # type: ignore[call-arg]
    replayer = Replayer(settings)
    for index, image in enumerate(sequence.frames()):
        item = replayer.step(index, image)
        yield index, full_size_mask(item.result, item.frame.size)


def mog2_masks(images: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """The plain baseline: MOG2 with shadows as background, 3x3 open, 3x3 dilate."""
    subtractor = cv2.createBackgroundSubtractorMOG2(detectShadows=True)
    kernel = np.ones((3, 3), np.uint8)
    for index, image in enumerate(images):
        raw = subtractor.apply(image)
        mask = np.where(raw == 255, 255, 0).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        yield index, cv2.dilate(mask, kernel)


def replay_dir_masks(directory: Path) -> Iterator[tuple[int, np.ndarray]]:
    """Masks written by `motion-replay --write-masks`, checked against frames.jsonl's indices."""
    lines = (directory / "frames.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        index = json.loads(line)["frame"]
        mask = cv2.imread(str(directory / "masks" / f"{index:06d}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(directory / "masks" / f"{index:06d}.png")
        yield index, mask


def evaluate(names: list[str], motion: MotionConfig | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{sequence: {"ours": summary, "mog2": summary}} for the named dev sequences."""
    table = {}
    for name in names:
        sequence = Sequence(DATASET / name)
        table[name] = {
            "ours": score(sequence, ours(sequence, motion)).summary(),
            "mog2": score(sequence, mog2_masks(sequence.frames())).summary(),
        }
    return table


def _mog2_motion(mask: np.ndarray, min_area: float) -> bool:
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return bool(count > 1 and stats[1:, cv2.CC_STAT_AREA].max() >= min_area * mask.size)


def stress(motion: MotionConfig | None = None, frames: int = 600) -> dict[str, dict[str, float]]:
    """{clip: {ours_alarms, mog2_alarms}} share of frames with motion; trees+walker adds latency and F1."""
    motion = motion or MotionConfig()  # type: ignore[call-arg]
    table: dict[str, dict[str, float]] = {}
    cases = [(name, ClipSpec(frames=frames)) for name in CLIPS]
    cases.append(("trees+walker", ClipSpec(frames=frames, walker_from=frames // 2)))
    for name, spec in cases:
        make = CLIPS[name.split("+")[0]]
        replayer = Replayer(ReplaySettings("stress", PrivacyMasker([]), motion, spec.fps))
        ours_motion, truths, our_masks = [], [], []
        for index, (image, truth) in enumerate(make(spec)):
            item = replayer.step(index, image)
            ours_motion.append(item.result.motion)
            truths.append(truth)
            our_masks.append(full_size_mask(item.result, item.frame.size))
        base_masks = [m for _, m in mog2_masks(image for image, _ in make(spec))]
        base_motion = [_mog2_motion(m, motion.min_area) for m in base_masks]
        row: dict[str, float] = {}
        quiet = [i for i, t in enumerate(truths) if not t.any()]
        # The first 2 s are the background's warm-up for both detectors.
        quiet = [i for i in quiet if i >= 2 * spec.fps]
        row["ours_alarms"] = round(sum(ours_motion[i] for i in quiet) / len(quiet), 4)
        row["mog2_alarms"] = round(sum(base_motion[i] for i in quiet) / len(quiet), 4)
        if spec.walker_from is not None:
            entry = next(i for i, t in enumerate(truths) if t.any())
            for label, flags, masks in (("ours", ours_motion, our_masks), ("mog2", base_motion, base_masks)):
                first = next((i for i in range(entry, len(flags)) if flags[i]), len(flags))
                row[f"{label}_latency"] = first - entry
                counts = Counts()
                roi = np.ones(truths[0].shape, bool)
                for mask, truth in zip(masks[entry:], truths[entry:], strict=True):
                    counts.add(mask, truth, roi)
                row[f"{label}_f1"] = round(counts.f1, 4)
        table[name] = row
    return table


def print_table(table: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'sequence':<16}{'ours P':>8}{'R':>7}{'F1':>7}   {'mog2 P':>8}{'R':>7}{'F1':>7}")
    for name, row in table.items():
        a, b = row["ours"], row["mog2"]
        print(
            f"{name:<16}{a['precision']:>8.3f}{a['recall']:>7.3f}{a['f1']:>7.3f}"
            f"   {b['precision']:>8.3f}{b['recall']:>7.3f}{b['f1']:>7.3f}"
        )
    mean_ours = sum(r["ours"]["f1"] for r in table.values()) / len(table)
    mean_mog2 = sum(r["mog2"]["f1"] for r in table.values()) / len(table)
    print(f"{'mean F1':<16}{'':>15}{mean_ours:>7.3f}   {'':>15}{mean_mog2:>7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", action="append", choices=SEQUENCES, help="default: all")
    parser.add_argument(
        "--replay-dir", type=Path, help="score this motion-replay output (needs --write-masks)"
    )
    parser.add_argument("--sensitivity", type=float, help="detector sensitivity (default: the config's)")
    parser.add_argument("--stress", action="store_true", help="the synthetic stress clips instead")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    motion = None if args.sensitivity is None else MotionConfig(sensitivity=args.sensitivity)  # type: ignore[call-arg]
    if args.stress:
        result = stress(motion)
        for name, row in result.items():
            print(f"{name:<14}" + "  ".join(f"{k} {v:g}" for k, v in row.items()))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    if not DATASET.is_dir():
        print(f"no dataset at {DATASET}")
        return 2
    names = args.sequence or list(SEQUENCES)
    if args.replay_dir:
        if len(names) != 1:
            parser.error("--replay-dir scores one --sequence")
        counts = score(Sequence(DATASET / names[0]), replay_dir_masks(args.replay_dir))
        print(json.dumps({names[0]: counts.summary()}, indent=2))
        return 0
    table = evaluate(names, motion)
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
