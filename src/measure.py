"""Speed and memory of the real parts: data pipeline, train step, inference, post-processing.

Each mode prints one JSON line. Numbers are medians over timed repetitions after warm-up;
the machine's other load is not controlled here, so run benchmarks on a quiet machine.
"""
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from src.config import Config
from src.cpu import cpu_info, usable_cores
from src.device import current_rss_mb, init_device, peak_rss_mb

MODES = ("data", "train", "infer", "eval", "postprocess", "epochs", "overfit")
ALL_MODES = MODES[:5]   # 'all': every mode but the long 'epochs' and 'overfit' runs
OVERFIT_TARGET_AP50 = 0.9
INFER_PEERS = ("onnxruntime", "openvino")
POSTPROCESS_PEERS = ("torchvision",)


def environment(config: Config, platform):
    """Where the numbers came from: versions, device, cores, the processor (model, features,
    the ISA oneDNN runs, the ONEDNN_MAX_CPU_ISA cap ('' when none)) and which convolution
    implementation the model was built with."""
    import mindspore as ms

    from src.model import Layers

    layers = Layers.from_config(config, platform)
    return {"mindspore": ms.__version__, "device": platform, "cpu_count": os.cpu_count(),
            **cpu_info().as_dict(), "conv_impl": layers.impl, "conv_dtype": layers.dtype,
            "layout_block": layers.block,
            "conv_algorithm": layers.algorithm if layers.ours else "mindspore"}


def timed(function, repeats, warmup):
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def demo_config(config: Config, workdir: str, name: str, train: int, val: int, seed: int = 0,
                size=(640, 480), **options) -> Config:
    """``config`` reading demo data (4 classes, COCO layout) generated into ``workdir/name``:
    ``train`` training and ``val`` validation images of ``size`` (None: the generator's sizes),
    ``options`` for the generator (``src.demo_data.generate``). Every mode's data is made here."""
    from src.demo_data import generate

    root = os.path.join(workdir, name)
    generate(root, train, val, seed=seed, image_size=size, **options)
    return config.replace(dataset="coco", coco_root=root, num_classes=4)


def quiet_split(config: Config, workdir: str, name: str, split: str):
    """``prepare_split`` of ``split`` into ``workdir`` (MindRecord in ``workdir/<name>-mr``),
    printing nothing."""
    from src.data.sources import prepare_split

    return prepare_split(config.replace(mindrecord_dir=os.path.join(workdir, f"{name}-mr")),
                         split, os.path.join(workdir, name), progress=False,
                         log=lambda m: None)


def benchmark_data(config: Config, workdir, images=96, batches=10, warmup=2, size=(640, 480)):
    """Training pipeline throughput on generated JPEGs (read, decode, crop, resize, flip,
    colour jitter, encode to the default boxes, normalise or not): the configured feed
    (``data_img_per_s``), then 1, 2 and all cores' worth of workers as threads and as
    processes, with float32 and uint8 images (``data_img_per_s_by_workers``)."""
    import mindspore as ms

    from src.box_coder import BoxCoder
    from src.data.feed import feed_settings
    from src.data.pipeline import create_train_dataset

    if not config.coco_root:   # one epoch holds every batch timed (an epoch's end stops it)
        config = demo_config(config, workdir, "data",
                             max(images, (batches + warmup) * config.batch_size), 1, size=size)
    files = quiet_split(config, workdir, "data-run", "train").files
    coder = BoxCoder.from_config(config)

    def rate(workers, processes, uint8):
        dataset = create_train_dataset(files, coder, config.batch_size, config.img_shape,
                                       num_workers=workers, seed=config.seed,
                                       processes=processes, uint8=uint8)
        iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
        for _ in range(warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return batches * config.batch_size / (time.perf_counter() - start)

    processes, uint8 = feed_settings(config, ms.get_context("device_target"))
    configured = rate(config.workers, processes, uint8)
    cores = usable_cores()
    sweep = {}
    for kind in ("threads", "processes"):
        for dtype in ("float32", "uint8"):
            sweep[f"{kind}_{dtype}"] = {
                str(n): round(rate(n, kind == "processes", dtype == "uint8"), 1)
                for n in sorted({1, 2, cores})}
    used = min(config.workers, cores)
    return {"mode": "data", "data_img_per_s": round(configured, 1),
            "data_img_per_s_per_core": round(configured / used, 1), "workers": used,
            "worker_kind": "processes" if processes else "threads",
            "input_dtype": "uint8" if uint8 else "float32", "cores": cores,
            "data_img_per_s_by_workers": sweep,
            "image_size": list(size) if config.coco_root.startswith(workdir) else "dataset",
            "batch_size": config.batch_size, "batches": batches}


def synthetic_batch(config: Config, batch_size):
    """A training batch of random images with three encoded boxes each."""
    from src.box_coder import BoxCoder

    rng = np.random.default_rng(0)
    coder = BoxCoder.from_config(config)
    targets = [coder.encode_targets(np.array([[0.1, 0.1, 0.5, 0.4, 1], [0.3, 0.5, 0.9, 0.9, 2],
                                              [0.6, 0.1, 0.8, 0.3, 3]], np.float32))
               for _ in range(batch_size)]
    image = rng.normal(size=(batch_size, 3, *config.img_shape)).astype(np.float32)
    return (image, np.stack([t[0] for t in targets]), np.stack([t[1] for t in targets]),
            np.stack([t[2] for t in targets]))


def benchmark_train(config: Config, steps, warmup):
    """One full training step (forward, loss, backward, update) of the real model."""
    import mindspore as ms

    from src.model import build_ssd, count_trainable_params
    from src.train.train_step import create_train_step

    network = build_ssd(config)
    step, _ = create_train_step(config, network, np.full(10, 1e-3, np.float32),
                                ms.get_context("device_target"))
    inputs = [ms.Tensor(x) for x in synthetic_batch(config, config.batch_size)]
    compile_start = time.perf_counter()
    step(*inputs)[0].asnumpy()
    compile_seconds = time.perf_counter() - compile_start
    seconds = timed(lambda: step(*inputs)[0].asnumpy(), steps, max(0, warmup - 1))
    median = statistics.median(seconds)
    return {"mode": "train", "batch_size": config.batch_size,
            "train_step_s_median": round(median, 4), "train_step_s_min": round(min(seconds), 4),
            "train_step_s_max": round(max(seconds), 4),
            "train_img_per_s": round(config.batch_size / median, 3),
            "first_step_s": round(compile_seconds, 2), "params": count_trainable_params(network),
            "peak_rss_mb": round(peak_rss_mb())}


def benchmark_infer(config: Config, steps, warmup, peers=(), int8=False, workdir=None):
    """Eval-mode forward pass with in-graph decoding, batch 1 latency and batch-8 throughput,
    images in and boxes and scores out as numpy (``src.infer.backends``); then each engine of
    ``peers`` (onnxruntime, openvino) on the same weights exported to ONNX, with as many
    threads and the arithmetic of ``conv_dtype`` where it offers it (``peer_<name>_precision``
    says which ran), and our ratios to it (above 1: we are faster). ``int8``: also the int8
    model (``--quantize int8``: NNCF, OpenVINO) of the same weights, calibrated on the
    configured training split or, without one, on demo data made in ``workdir``;
    ``int8_speedup_bs8`` is its batch-8 throughput over ours."""
    from src.infer.backends import create_detector, engine_threads

    result: dict = {"mode": "infer", "threads": engine_threads(config)}
    for name in ("mindspore", *peers):
        detector: Any = None
        for batch in (1, 8):
            if detector is None or name != "mindspore":    # ONNX: one export per batch size
                detector = create_detector(config, config.checkpoint_path or None, name, batch)
            image = np.random.default_rng(0).normal(
                size=(batch, 3, *config.img_shape)).astype(np.float32)
            median = statistics.median(timed(lambda d=detector, x=image: d(x), steps, warmup))
            key = "infer" if name == "mindspore" else f"peer_{name}"
            if batch == 1:
                result[f"{key}_bs1_ms"] = round(median * 1000, 2)
            else:
                result[f"{key}_bs8_img_per_s"] = round(8 / median, 3)
        if name != "mindspore":
            result[f"peer_{name}_precision"] = detector.precision
            result[f"bs1_speedup_vs_{name}"] = round(
                result[f"peer_{name}_bs1_ms"] / result["infer_bs1_ms"], 3)
            result[f"bs8_speedup_vs_{name}"] = round(
                result["infer_bs8_img_per_s"] / result[f"peer_{name}_bs8_img_per_s"], 3)
    if int8:
        result.update(benchmark_int8(config, steps, warmup, workdir, result))
    result["peak_rss_mb"] = round(peak_rss_mb())
    return result


def benchmark_int8(config: Config, steps, warmup, workdir, ours) -> dict:
    """int8 batch-1 latency and batch-8 throughput (``benchmark_infer``'s ``int8``)."""
    from src.infer.backends import create_detector
    from src.infer.quantize import versions

    if not config.data_root:
        config = demo_config(config, workdir or tempfile.mkdtemp(prefix="ssd-int8-"),
                             "calibration", max(config.calibration_images, 8), 1, size=None)
    quantized = config.replace(quantize="int8")
    result = {}
    for batch in (1, 8):
        detector = create_detector(quantized, config.checkpoint_path or None, "openvino", batch)
        image = np.random.default_rng(0).normal(
            size=(batch, 3, *config.img_shape)).astype(np.float32)
        median = statistics.median(timed(lambda d=detector, x=image: d(x), steps, warmup))
        if batch == 1:
            result["int8_bs1_ms"] = round(median * 1000, 2)
        else:
            result["int8_bs8_img_per_s"] = round(8 / median, 3)
    made = versions()
    result["int8_speedup_bs8"] = round(result["int8_bs8_img_per_s"] /
                                       ours["infer_bs8_img_per_s"], 3)
    result["int8_backend"] = f"openvino {made['openvino']} (NNCF {made['nncf']})"
    result["int8_calibration_images"] = config.calibration_images
    return result


def benchmark_eval(config: Config, workdir, images):
    """Memory of eval.py's path on generated demo-style val images: data pipeline, inference,
    post-processing, COCOeval. Resident memory is read after every batch: what the first
    batch leaves is the working set; growth after it would scale with the number of images."""
    import contextlib
    import io

    from src.infer.evaluation import Evaluation

    if not config.coco_root:
        config = demo_config(config, workdir, "eval-data", 1, images)
    output_dir = os.path.join(workdir, "eval")
    prepared = quiet_split(config, workdir, "eval", "eval")
    evaluation = Evaluation(config.replace(progress="off"), prepared,
                            config.checkpoint_path or None)
    samples = []
    start = time.perf_counter()
    detections = evaluation.infer(
        on_batch=lambda done: samples.append((done, current_rss_mb())))
    seconds = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.score(detections, output_dir, {})
    (first_done, first_rss), (last_done, last_rss) = samples[0], samples[-1]
    growth = (last_rss - first_rss) / max(last_done - first_done, 1) * 100
    return {"mode": "eval", "images": detections.image_count,
            "eval_batch_size": config.eval_batch_size,
            "eval_img_per_s": round(detections.image_count / seconds, 2),
            "eval_rss_after_first_batch_mb": round(first_rss),
            "eval_rss_after_last_batch_mb": round(last_rss),
            "eval_rss_growth_mb_per_100_images": round(growth, 1),
            "eval_peak_rss_mb": round(peak_rss_mb()),
            "weights": "checkpoint" if config.checkpoint_path else "random"}


# COCO's 80 category ids (1..90 with gaps): the stress case declares them like COCO val.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def stress_ground_truth(path, images, rng):
    """A COCO-val-like annotation file: ``images`` 640 x 480 images, COCO's 80 categories,
    1-14 boxes an image (COCO val has 7.3 on average)."""
    from src.files import write_json

    annotations: list = []
    for img_id in range(1, images + 1):
        for _ in range(int(rng.integers(1, 15))):
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            w, h = rng.uniform(4, 640 - x), rng.uniform(4, 480 - y)
            annotations.append({"id": len(annotations) + 1, "image_id": img_id,
                                "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    write_json({"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640}
                           for i in range(1, images + 1)],
                "annotations": annotations,
                "categories": [{"id": c, "name": f"class_{c}"} for c in COCO_CATEGORY_IDS]}, path)


def eval_stress(config: Config, workdir, images, samples=4):
    """Evaluation's worst case at ``images`` images (run in a process of its own, so that its
    peak memory is its own): an untrained 81-class model's outputs (``samples`` of them,
    reused image after image), post-processed (8,000 detections an image), written as
    detections.json and scored by ``config.coco_evaluator``."""
    from src.boxes import yxyx_to_xywh
    from src.detections import PostProcessor
    from src.metrics import coco_evaluate

    rng = np.random.default_rng(0)
    truth = os.path.join(workdir, f"stress-{images}.json")
    stress_ground_truth(truth, images, rng)
    post = PostProcessor.from_config(config, (0, *COCO_CATEGORY_IDS))
    outputs = [synthetic_outputs(config, rng, True, len(COCO_CATEGORY_IDS) + 1)
               for _ in range(samples)]
    found, seconds = [], []
    for boxes, scores in outputs:
        start = time.perf_counter()
        found.append(post.detect(boxes, scores, (480.0, 640.0)))
        seconds.append(time.perf_counter() - start)
    store = post.new_store()
    start = time.perf_counter()
    for img_id in range(1, images + 1):
        boxes, scores, classes = found[img_id % samples]
        store.add(img_id, yxyx_to_xywh(boxes), scores, classes)
    add_seconds = time.perf_counter() - start
    start = time.perf_counter()
    store.write_json(os.path.join(workdir, f"stress-{images}-detections.json"))
    json_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = coco_evaluate(truth, store, store.image_ids, library=config.coco_evaluator)
    score_seconds = time.perf_counter() - start
    per_image = 1000 / images
    return {"mode": "eval_stress", "images": images, "classes": len(COCO_CATEGORY_IDS) + 1,
            "detections_per_image": round(len(store) / images),
            "coco_evaluator": config.coco_evaluator,
            "nms": "kernel" if post.kernel is not None else "numpy",
            "postprocess_ms_per_image": round(statistics.median(seconds) * 1000, 2),
            "store_ms_per_image": round(add_seconds * per_image, 3),
            "json_ms_per_image": round(json_seconds * per_image, 2),
            "score_ms_per_image": round(score_seconds * per_image, 2),
            "store_mb": round(store.nbytes / 2 ** 20, 1),
            "mAP": round(float(result.stats[0]), 6),
            "peak_rss_mb": round(peak_rss_mb())}


def benchmark_eval_stress(config: Config, workdir, sizes):
    """``eval_stress`` at each size, each in a fresh process; adds how the time and memory per
    image grow from the smallest size to each larger one."""
    import multiprocessing

    results = []
    context = multiprocessing.get_context("spawn")
    for images in sizes:
        with context.Pool(1) as pool:
            results.append(pool.apply(eval_stress, (config, workdir, images)))
    first = results[0]
    for result in results[1:]:
        extra = result["images"] - first["images"]
        result["peak_rss_growth_mb_per_1000_images"] = round(
            (result["peak_rss_mb"] - first["peak_rss_mb"]) / max(extra, 1) * 1000, 1)
    return results


def synthetic_outputs(config: Config, rng, untrained=False, classes=None):
    """Decoded boxes (anchors jittered a little) and class scores: a trained detector's, mostly
    near zero (Beta(0.5, 40)) so that a few hundred pass score > 0.1; or with ``untrained``
    an untrained model's sigmoid scores, near 0.5 for every class, so that all
    ``num_ssd_boxes x (classes - 1)`` candidates pass (evaluation's worst case)."""
    from src.box_coder import BoxCoder

    coder = BoxCoder.from_config(config)
    classes = classes or config.class_count
    boxes = coder.decode(rng.normal(0, 0.5, (config.num_ssd_boxes, 4)).astype(np.float32))
    if untrained:
        scores = 1 / (1 + np.exp(-rng.normal(0, 0.2, (config.num_ssd_boxes, classes))))
    else:
        scores = rng.beta(0.5, 40, (config.num_ssd_boxes, classes))
    return boxes, scores.astype(np.float32)


def network_outputs(config: Config, workdir, count=4):
    """Decoded boxes and scores of the checkpoint's network on generated demo images."""
    import cv2
    import mindspore as ms

    from src.data.transforms import network_input
    from src.model import build_inference_network

    folder = os.path.join(demo_config(config, workdir, "outputs-data", 1, count,
                                      seed=7).coco_root, "val2017")
    net = build_inference_network(config, config.checkpoint_path)
    samples = []
    for name in sorted(os.listdir(folder))[:count]:
        image = cv2.cvtColor(cv2.imread(os.path.join(folder, name)), cv2.COLOR_BGR2RGB)
        boxes, scores = net(ms.Tensor(network_input(image, config.img_shape)[None]))
        samples.append((boxes.asnumpy()[0], scores.asnumpy()[0]))
    return samples


def cap_per_class(keep: np.ndarray, classes: np.ndarray, max_per_class: int) -> np.ndarray:
    """The first ``max_per_class`` of each class in ``keep`` (indices into ``classes``, in the
    order given: for NMS output, highest score first), in that order."""
    keep_classes = classes[keep]
    order = np.argsort(keep_classes, kind="stable")
    sorted_classes = keep_classes[order]
    rank = np.empty(len(keep), np.int64)
    rank[order] = np.arange(len(keep)) - np.searchsorted(sorted_classes, sorted_classes)
    return keep[rank < max_per_class]


def torchvision_detect(post, nms=None):
    """``post.detect`` with ``torchvision.ops.batched_nms`` (or ``nms``: numpy boxes (n, 4),
    scores (n,), classes (n,), threshold -> kept indices, highest score first) as its NMS
    strategy, capped per class as ours: the same candidates, pixel boxes and caps
    (``PostProcessor``'s own path). torchvision's IoU has no '+1', so ``post.plus_one`` must be
    False."""
    if post.plus_one:
        raise ValueError("torchvision's NMS has no '+1' IoU: compare with plus_one=False")
    if nms is None:
        import torch
        from torchvision.ops import batched_nms

        def nms(boxes, scores, classes, threshold):
            return batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                               torch.from_numpy(classes), threshold).numpy()

    def strategy(boxes, scores, classes, threshold, max_per_class, plus_one):
        return cap_per_class(nms(boxes, scores, classes, threshold), classes, max_per_class)

    from src.detections import PostProcessor

    return PostProcessor(post.category_ids, post.min_score, post.nms_threshold,
                         post.max_per_class, post.max_per_image, post.plus_one,
                         nms=strategy).detect


def differing_detections(ours: tuple, theirs: tuple) -> int:
    """How many detections (class, score, box to 1e-6 px) one of two results has and the
    other has not."""
    def keys(result):
        boxes, scores, classes = result
        return {(int(c), float(s), *np.round(b, 6).tolist())
                for b, s, c in zip(boxes, scores, classes)}
    return len(keys(ours) ^ keys(theirs))


def benchmark_postprocess(config: Config, images, warmup, workdir, peers=()):
    """Post-processing (thresholds, NMS, COCO records) per image at the configured settings,
    on the outputs of --checkpoint_path's network if given, else on synthetic outputs.
    With the peer ``torchvision``: our detection step and the same step done by
    ``torchvision.ops.batched_nms`` on the same candidates, both with torchvision's IoU (no
    '+1'), one thread each, their times, our ratio (above 1: we are faster) and how many
    detections differ."""
    from src.detections import PostProcessor

    rng = np.random.default_rng(0)
    post = PostProcessor.from_config(config, list(range(config.class_count)))
    if config.checkpoint_path:
        samples, source = network_outputs(config, workdir), "checkpoint"
    else:
        samples, source = [synthetic_outputs(config, rng) for _ in range(4)], "synthetic"
    candidates = np.mean([(s[:, 1:] > config.min_score).sum() for _, s in samples])
    rss_before = peak_rss_mb()
    counter = iter(range(10 ** 9))

    def one():
        boxes, scores = samples[next(counter) % len(samples)]
        post.process_batch([1], boxes[None], scores[None], [(480.0, 640.0)], post.new_store())

    seconds = timed(one, images, warmup)
    return {"mode": "postprocess", "postprocess_ms_per_image":
            round(statistics.median(seconds) * 1000, 3), "outputs": source,
            "candidates_per_image": int(candidates),
            "images": images, "peak_rss_mb": round(peak_rss_mb()),
            "rss_growth_mb": round(peak_rss_mb() - rss_before, 1),
            **(compare_nms_with_torchvision(config, samples, images, warmup) if peers else {})}


def compare_nms_with_torchvision(config: Config, samples, images, warmup):
    """The torchvision peer's fields of ``benchmark_postprocess``."""
    import torch

    from src.detections import PostProcessor

    torch.set_num_threads(1)
    post = PostProcessor(list(range(config.class_count)), config.min_score,
                         config.nms_threshold, config.max_boxes,
                         config.max_detections_per_image, plus_one=False)
    peer = torchvision_detect(post)
    hw = (480.0, 640.0)
    result = {}
    for name, detect in (("postprocess_exact_iou", post.detect), ("peer_torchvision", peer)):
        counter = iter(range(10 ** 9))

        def one(detect=detect, counter=counter):
            boxes, scores = samples[next(counter) % len(samples)]
            detect(boxes, scores, hw)

        result[f"{name}_ms_per_image"] = round(
            statistics.median(timed(one, images, warmup)) * 1000, 3)
    result["speedup_vs_torchvision"] = round(
        result["peer_torchvision_ms_per_image"] / result["postprocess_exact_iou_ms_per_image"], 3)
    result["peer_torchvision_detections_differing"] = sum(
        differing_detections(post.detect(b, s, hw), peer(b, s, hw)) for b, s in samples)
    result["peer_torchvision_detections"] = sum(len(peer(b, s, hw)[1]) for b, s in samples)
    return result


def benchmark_epochs(config: Config, workdir, epochs):
    """Memory across epochs of the real training loop (train.py's): one step an epoch on
    ``batch_size`` generated images, ``epochs`` epochs; resident memory after each epoch from
    the training log, and its growth per epoch (a least-squares slope) after the first few."""
    import contextlib
    import io

    from src.train.trainer import train

    out = os.path.join(workdir, "epochs-run")
    run_config = demo_config(config, workdir, "epochs-data", config.batch_size, 1).replace(
        output_dir=out, mindrecord_dir=os.path.join(workdir, "epochs-mr"), epoch_size=epochs,
        save_checkpoint_epochs=epochs, eval_interval=0, progress="off", resume="",
        pre_trained="")
    with contextlib.redirect_stdout(io.StringIO()):
        train(run_config)
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as log:
        rows = [json.loads(line) for line in log]
    rss = [row["rss_mb"] for row in rows if row.get("kind") == "epoch"]
    settled = min(5, len(rss) // 3)
    tail = np.arange(settled, len(rss))
    growth = float(np.polyfit(tail, np.asarray(rss)[tail], 1)[0]) if len(tail) > 1 else 0.0
    return {"mode": "epochs", "epochs": len(rss), "batch_size": config.batch_size,
            "rss_after_first_epoch_mb": round(rss[0], 1), "rss_after_last_epoch_mb": round(
                rss[-1], 1), "rss_growth_mb_per_epoch": round(growth, 2),
            "growth_from_epoch": settled + 1, "malloc_arenas": config.malloc_arenas}


def overfit_batch(config: Config, prepared):
    """Every image of a prepared split as one training batch, without augmentation: images as
    evaluation feeds them (resize, normalise) and their boxes encoded by the real BoxCoder."""
    from src.box_coder import BoxCoder
    from src.data.transforms import network_input, normalize_boxes
    from src.infer.predictor import read_image

    coder = BoxCoder.from_config(config)
    images, targets = [], []
    for record in prepared.source.records:
        image = read_image(record.path)[:, :, ::-1]
        images.append(network_input(image, config.img_shape))
        targets.append(coder.encode_targets(normalize_boxes(record.annotation(),
                                                            *image.shape[:2])))
    return (np.stack(images), *(np.stack([t[k] for t in targets]) for k in range(3)))


def benchmark_overfit(config: Config, workdir, steps, images=8, check_every=25):
    """Proof that the whole chain learns: from random weights, ``images`` generated demo images
    as one batch (no augmentation) trained for up to ``steps`` steps (warm-up and cosine decay
    of --lr, default 0.02, over them), scored every ``check_every`` steps on the same images by
    eval.py's path (decoder, NMS, COCOeval); stops when AP50 reaches OVERFIT_TARGET_AP50. A
    swapped coordinate or a broken decode anywhere keeps AP50 low."""
    import contextlib
    import io

    import mindspore as ms

    from src.infer.evaluation import Evaluation
    from src.lr_schedule import warmup_cosine_lr
    from src.model import build_ssd
    from src.model.weights import copy_weights
    from src.train.train_step import create_train_step

    # Shapes of at least 0.2 of the shorter side: each then overlaps a default box with IoU
    # >= 0.5 (smaller ones often do not, and would cap AP50 whatever the chain did).
    config = demo_config(config, workdir, "overfit-data", 1, images, seed=5,
                         min_shape_fraction=0.2).replace(progress="off", eval_batch_size=images)
    output_dir = os.path.join(workdir, "overfit")
    prepared = quiet_split(config, workdir, "overfit", "eval")
    inputs = [ms.Tensor(x) for x in overfit_batch(config, prepared)]
    peak = config.lr or 0.02
    lr = warmup_cosine_lr(config.lr_init, peak, peak * config.lr_end_rate,
                          max(1, steps // 20), steps, 1)
    network = build_ssd(config)
    step, _ = create_train_step(config, network, lr, ms.get_context("device_target"))
    evaluation = Evaluation(config, prepared, fold_bn=False)
    history, done, loss = [], 0, float("nan")
    start = time.perf_counter()
    while done < steps:
        loss = float(step(*inputs)[0].asnumpy())
        done += 1
        if done % check_every and done < steps:
            continue
        copy_weights(network, evaluation.net)
        with contextlib.redirect_stdout(io.StringIO()):
            result = evaluation(output_dir, {})
        history.append({"step": done, "loss": round(loss, 4), "AP50": round(result["AP50"], 4),
                        "AP": round(result["mAP"], 4)})
        print(f"overfit step {done}: loss {loss:.4f}, AP50 {result['AP50']:.4f}, "
              f"AP {result['mAP']:.4f}", file=sys.stderr, flush=True)
        if result["AP50"] >= OVERFIT_TARGET_AP50:
            break
    last = history[-1]
    return {"mode": "overfit", "images": len(prepared.source.records), "lr": peak,
            "overfit_ap50": last["AP50"], "overfit_ap": last["AP"],
            "overfit_steps": done, "reached": last["AP50"] >= OVERFIT_TARGET_AP50,
            "overfit_seconds": round(time.perf_counter() - start, 1), "final_loss": last["loss"],
            "history": history, "peak_rss_mb": round(peak_rss_mb())}


def run_twin(script, python, config: Config, steps, warmup):
    """The PyTorch twin's result dict (its last JSON line), run with our batch, steps and
    thread count (``../shared/bench/torch_twin.py``; it needs a Python with torch)."""
    import subprocess

    command = [python, script, "--mode", "all", "--batch", str(config.batch_size),
               "--threads", str(os.cpu_count() or 1), "--steps", str(steps),
               "--warmup", str(warmup)]
    from src.interrupts import sigterm_unblocked

    with sigterm_unblocked():      # else the twin would inherit SIGTERM blocked
        result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                           f"{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def compare_with_twin(ours, twin):
    """Ratios of our numbers to the twin's: above 1 is better for throughputs; for the
    batch-1 latency, below 1 is better."""
    ratios = {"mode": "compare", "twin_torch": twin.get("torch_version"),
              "twin_train_img_per_s": twin.get("train_img_per_s"),
              "twin_infer_bs1_ms": twin.get("infer_bs1_ms"),
              "twin_infer_bs8_img_per_s": twin.get("infer_bs8_img_per_s")}
    for key in ("train_img_per_s", "infer_bs8_img_per_s", "infer_bs1_ms"):
        if key in ours and twin.get(key):
            ratios[f"{key}_ratio"] = round(ours[key] / twin[key], 3)
    return ratios


def run(config: Config, modes, steps=5, warmup=2, twin=None, twin_python="python3", eval_images=40,
        epochs=30, stress_images=(50, 200), overfit_steps=400, peers=(), int8=False):
    """Run the modes; returns their result dicts (each also printed as one JSON line).
    With ``twin`` (the PyTorch twin's script), the twin runs right after ours and a
    'compare' line gives the ratios."""
    platform = init_device(config.run_platform, config.device_id, config.seed)
    infer_peers = tuple(p for p in peers if p in INFER_PEERS)
    postprocess_peers = tuple(p for p in peers if p in POSTPROCESS_PEERS)
    results = []
    with tempfile.TemporaryDirectory(prefix="ssd-benchmark-") as workdir:
        for mode in modes:
            if mode == "data":
                result = benchmark_data(config, workdir, warmup=warmup, batches=max(steps, 5))
            elif mode == "train":
                result = benchmark_train(config, steps, warmup)
            elif mode == "infer":
                result = benchmark_infer(config, steps, warmup, infer_peers, int8, workdir)
            elif mode == "eval":
                result = benchmark_eval(config, workdir, eval_images)
            elif mode == "epochs":
                result = benchmark_epochs(config, workdir, epochs)
            elif mode == "overfit":
                result = benchmark_overfit(config, workdir, overfit_steps)
            else:
                result = benchmark_postprocess(config, max(steps, 20), warmup, workdir,
                                              postprocess_peers)
            lines = [result] + (benchmark_eval_stress(config, workdir, stress_images)
                                if mode == "eval" else [])
            for line in lines:
                line.update(environment(config, platform))
                print(json.dumps(line), flush=True)
                results.append(line)
    if twin:
        ours = {k: v for r in results for k, v in r.items()}
        twin_result = run_twin(twin, twin_python, config, steps, warmup)
        print(json.dumps({"mode": "twin", **twin_result}), flush=True)
        results.append(compare_with_twin(ours, twin_result))
        print(json.dumps(results[-1]), flush=True)
    return results

