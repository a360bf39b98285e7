"""predict.py: detections drawn on images, plus a json of them, from a checkpoint.

Conventions:

* Pixels as stored: images are decoded with their EXIF orientation ignored
  (``cv2.IMREAD_IGNORE_ORIENTATION``), as MindSpore's ``vision.Decode`` in training and
  evaluation, the sizes of the data check and postprocess.py (PIL), and COCO's own ``width`` and
  ``height`` do. Boxes are in that frame and the pictures are drawn in it (a phone photo taken
  upright may show turned on its side).
* Output names: the picture of an input keeps its file name and extension, and its format
  (``a.png`` gives ``a.png``, a PNG; ``a.jpg`` gives ``a.jpg``), so ``a.jpg`` and ``a.png`` stay
  apart; the same file name twice among the inputs is refused. Pictures are written whole or
  not at all (``src.files.atomic_path``).
* Inputs are never written over: an output folder that is the folder of an input, or an output
  file that is an input (a link), is refused before anything is written.
"""
import contextlib
import glob
import os
from dataclasses import dataclass

import cv2
import numpy as np

from src.boxes import yxyx_to_xywh
from src.config import Config
from src.data.transforms import network_input
from src.detections import PostProcessor
from src.device import start_run
from src.files import atomic_path, write_atomic, write_json
from src.infer.backends import create_detector
from src.model.metadata import check_inference_boxes, read_class_names, with_checkpoint_classes
from src.progress import Progress
from src.text import listed
from src.visualize import draw_detections

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
# The codec each video container is written with (OpenCV's bundled FFmpeg has these).
VIDEO_CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_OUTPUT_DIR = os.path.join("outputs", "predict")


@dataclass(frozen=True)
class Input:
    """One image or video to detect objects in: its ``path``, its output's ``name`` (relative to
    the output folder: the file name, or its path inside a folder given with ``--recursive``)."""
    path: str
    name: str

    @property
    def video(self) -> bool:
        return self.path.lower().endswith(VIDEO_SUFFIXES)


def _media(names) -> list:
    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES))


def list_inputs(arguments, recursive: bool = False) -> list:
    """The ``Input`` s that ``--image`` arguments name: files, folders (their images and
    videos, in sorted order; with ``recursive`` also those of their subfolders, named by their
    path inside the folder) and glob patterns (``'shots/*.jpg'``, ``'**'`` with recursive)."""
    found = []
    for argument in [arguments] if isinstance(arguments, str) else arguments:
        if os.path.isdir(argument):
            if recursive:
                files = [os.path.join(top, name) for top, _, names in os.walk(argument)
                         for name in _media(names)]
            else:
                files = [os.path.join(argument, n) for n in _media(os.listdir(argument))]
            if not files:
                hint = "" if recursive else " (--recursive true searches its subfolders)"
                raise ValueError(f"--image {argument}: the folder has no "
                                 f"{'/'.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)} files{hint}")
            found += [Input(f, os.path.relpath(f, argument)) for f in sorted(files)]
        elif os.path.isfile(argument):
            found.append(Input(argument, os.path.basename(argument)))
        elif any(c in argument for c in "*?["):
            files = [f for f in _media(glob.glob(argument, recursive=recursive))
                     if os.path.isfile(f)]
            if not files:
                raise ValueError(f"--image {argument}: the pattern matches no image or video")
            found += [Input(f, os.path.basename(f)) for f in files]
        else:
            raise ValueError(f"--image {argument}: no such file or folder")
    return found


def list_images(path: str) -> list:
    """The image and video files a --image argument names (see ``list_inputs``)."""
    return [item.path for item in list_inputs([path])]


def read_image(path: str) -> np.ndarray:
    """The BGR ``uint8`` pixels of ``path`` as stored (EXIF orientation ignored: the module's
    convention); ValueError naming the file if it does not decode."""
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return image


def picture_name(path: str) -> str:
    """The output picture's file name for input ``path``: the input's own file name."""
    return os.path.basename(path)


def write_picture(target: str, picture: np.ndarray, source: str) -> str:
    """``picture`` encoded in the format of ``target``'s extension, written atomically."""
    extension = os.path.splitext(target)[1].lower()
    done, encoded = cv2.imencode(extension, picture)
    if not done:
        raise OSError(f"{target}: cannot be encoded as {extension} (the picture of {source})")
    return write_atomic(target, lambda f: f.write(encoded.tobytes()), "wb")


def check_outputs(files: list, output_dir: str) -> None:
    """ValueError, before anything is written, if writing into ``output_dir`` could touch an
    input: the folder holds inputs (the same folder, or a link to it), or one of its output
    files (pictures, videos, detections.json, config.yaml) already is an input file (a link).
    ``files``: ``Input`` s, or paths (named by their file name)."""
    items = [f if isinstance(f, Input) else Input(f, picture_name(f)) for f in files]
    folder = os.path.realpath(output_dir)
    for item in items:
        if os.path.realpath(os.path.dirname(os.path.abspath(item.path))) == folder:
            raise ValueError(
                f"--output_dir {output_dir} is the folder of the input {item.path}; predict.py "
                f"never writes into its inputs' folder (pictures are named as their inputs, "
                f"plus detections.json and config.yaml): pass another --output_dir")
    inputs = {os.path.realpath(item.path): item.path for item in items}
    outputs = [item.name for item in items] + ["detections.json", "config.yaml"]
    for name in outputs:
        target = os.path.realpath(os.path.join(output_dir, name))
        if target in inputs:
            raise ValueError(f"--output_dir {output_dir}: {os.path.join(output_dir, name)} is "
                             f"the input {inputs[target]} (a link) and would be overwritten: "
                             f"pass another --output_dir")


class VideoOutput:
    """The annotated copy of a video: the same frame size, frame rate and container, written
    whole or not at all (``atomic_path``: a private temporary name until ``finish``)."""

    def __init__(self, source: str, target: str, fps: float, size: tuple):
        self.source, self.target = source, target
        self.frames = 0
        self._stack = contextlib.ExitStack()
        temporary = self._stack.enter_context(atomic_path(target))
        extension = os.path.splitext(target)[1].lower()
        codec = cv2.VideoWriter.fourcc(*VIDEO_CODECS[extension])
        self.writer = cv2.VideoWriter(temporary, codec, fps, size)
        if not self.writer.isOpened():
            self._stack.close()
            raise OSError(f"{target}: OpenCV cannot write {extension} video here (the picture "
                          f"frames of {source})")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def finish(self) -> None:
        self.writer.release()
        self._stack.close()

    def abandon(self) -> None:
        self.writer.release()
        self._stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)


def frames_of(items: list):
    """(input, frame number, BGR pixels) of every image (frame 0) and every video frame, in
    order; ValueError naming a file that cannot be read."""
    for item in items:
        if not item.video:
            yield item, 0, read_image(item.path)
            continue
        capture = cv2.VideoCapture(item.path)
        if not capture.isOpened():
            raise ValueError(f"{item.path}: cannot be opened as a video (OpenCV's FFmpeg reads "
                             f"{'/'.join(VIDEO_SUFFIXES)})")
        try:
            number = 0
            while True:
                read, frame = capture.read()
                if not read:
                    break
                yield item, number, frame
                number += 1
            if number == 0:
                raise ValueError(f"{item.path}: the video has no frame that can be decoded")
        finally:
            capture.release()


def frame_count(item: Input) -> int:
    """Frames of a video as its container states them (1 for an image): the progress bar's
    total, not a promise."""
    if not item.video:
        return 1
    capture = cv2.VideoCapture(item.path)
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def class_names_for(config: Config) -> tuple:
    """--classes, else the names stored in the checkpoint, else class_1, class_2 ..."""
    if config.classes:
        return tuple(config.classes)
    stored = read_class_names(config.checkpoint_path)
    if stored and len(stored) == config.num_classes:
        return tuple(stored)
    return ("background",) + tuple(f"class_{i}" for i in range(1, config.num_classes))


def predict(config: Config, image_paths, draw_threshold: float = 0.5,
            recursive: bool = False) -> dict:
    """Detect objects in images and videos (files, folders, glob patterns; ``list_inputs``);
    writes pictures and annotated videos named as their inputs, and detections.json (the
    module's conventions: pixels as stored, inputs never overwritten). Images and video frames
    go through the network ``eval_batch_size`` at a time.

    Every detection above ``min_score`` (after NMS) goes into the json, as eval.py's COCO
    result records (``image_id`` = the picture's or frame's position, 1-based; ``category_id``
    = the class index) plus ``file_name``, ``class`` and, for a video, ``frame`` (from 0);
    those above ``draw_threshold`` are drawn. Returns {output name: its records}.
    """
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    items = list_inputs(image_paths, recursive)
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--image: {listed(repeated)} named more than once (the pictures are "
                         "named by the file name): give each image once")
    check_outputs(items, config.output_dir or DEFAULT_OUTPUT_DIR)
    check_inference_boxes(config, config.checkpoint_path)
    run = start_run(config, DEFAULT_OUTPUT_DIR)
    output_dir, platform = run.output_dir, run.platform
    config = with_checkpoint_classes(config, config.checkpoint_path)
    class_names = class_names_for(config)
    total = sum(frame_count(item) for item in items)
    batch_size = max(1, min(config.eval_batch_size, total))
    detector = create_detector(config, config.checkpoint_path, config.backend, batch_size)
    postprocessor = PostProcessor.from_config(config, list(range(config.num_classes)))
    results: dict = {item.name: [] for item in items}
    videos: dict = {}
    bar = Progress(total, "predict", config.progress)
    counter = 0

    def emit(item, number, image, boxes, scores):
        nonlocal counter
        counter += 1
        found, found_scores, classes = postprocessor.detect(boxes, scores, image.shape[:2])
        shown = found_scores > draw_threshold
        picture = draw_detections(image, found[shown], found_scores[shown], classes[shown],
                                  class_names)
        target = os.path.join(output_dir, item.name)
        if item.video:
            if item.name not in videos:
                fps = cv2.VideoCapture(item.path).get(cv2.CAP_PROP_FPS) or 25.0
                videos[item.name] = VideoOutput(item.path, target, fps,
                                                (image.shape[1], image.shape[0]))
            videos[item.name].write(picture)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write_picture(target, picture, item.path)
        store = postprocessor.new_store()
        store.add(counter, yxyx_to_xywh(found), found_scores, classes)
        extra = {"frame": number} if item.video else {}
        results[item.name] += [
            {**record, "file_name": item.name, **extra, "class": class_names[c]}
            for record, c in zip(store.records(), classes)]
        bar.update(detections=sum(len(r) for r in results.values()))
        if not item.video and len(items) <= 20:
            print(f"{item.path}: {int(shown.sum())} detections above {draw_threshold} drawn "
                  f"({len(found)} above {config.min_score} in the json)", flush=True)

    pending: list = []

    def flush():
        images = [network_input(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), config.img_shape)
                  for _, _, image in pending]
        images += [images[0]] * (batch_size - len(images))   # one batch shape, one graph
        boxes, scores = detector(np.stack(images))
        for k, (item, number, image) in enumerate(pending):
            emit(item, number, image, boxes[k], scores[k])
        pending.clear()

    try:
        for frame in frames_of(items):
            pending.append(frame)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    except BaseException:
        for video in videos.values():
            video.abandon()
        raise
    finally:
        bar.close()
    for name, video in videos.items():
        video.finish()
        print(f"{video.source}: {video.frames} frames, {len(results[name])} detections in the "
              f"json; annotated video {video.target}", flush=True)
    write_json([r for found in results.values() for r in found],
               os.path.join(output_dir, "detections.json"))
    print(f"Pictures, videos and detections.json ({platform}) in {os.path.abspath(output_dir)}")
    return results
