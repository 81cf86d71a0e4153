"""Sections ``latency`` and ``baseline``: batch-1 latency and batch-32 throughput of the
models through ``Predictor`` (as ``run`` serves them, and the Keras model beside), and of
FaceNet's frozen graph run directly."""

from __future__ import annotations

from benchmarks.common import BASELINE, Row, Settings, face_batch, median, progress, stats_ms, time_calls
from benchmarks.models import ModelEntry, backend_details, served_predictor


def measure_model(entry: ModelEntry, s: Settings, keras_rows: bool = False) -> list[Row]:
    """Batch-1 latency and batch-32 throughput through ``Predictor.predict_arrays``, flip TTA off
    so one face is one forward pass: with the runner ``run`` serves, or (``keras_rows``, metrics
    ``*_keras``) with the Keras model."""
    from faceattr.inference.predictor import Predictor

    if keras_rows:
        predictor = Predictor.from_loaded(entry.loaded, batch_size=32, tta_flip=False)
    else:
        predictor = served_predictor(entry, 32, False)
    suffix = "_keras" if keras_rows else ""
    size = predictor.input_size
    one, many = face_batch(size, 1, 0.1), face_batch(size, 32, 0.1)
    progress(f"{entry.name}: batch-1 latency, {predictor.backend} ({s.latency_calls} calls)")
    lat = time_calls(lambda: predictor.predict_arrays(one), s.latency_calls, s.warmup)
    progress(f"{entry.name}: batch-32 throughput, {predictor.backend} ({s.b32_calls} calls)")
    b32 = time_calls(lambda: predictor.predict_arrays(many), s.b32_calls, max(1, s.warmup // 2))
    common = {"input_size": size, "tta_flip": False, **backend_details(entry, predictor.runner)}
    note = predictor.backend + (f", {common['quantization']} weights" if common.get("quantization") else "")
    return [
        Row(f"latency_b1{suffix}", entry.name, round(median(lat) * 1000.0, 3), "ms/face", note=note,
            details={**common, **stats_ms(lat)}),
        Row(f"throughput_b32{suffix}", entry.name, round(32 / median(b32), 2), "faces/s", note=note,
            details={**common, "batch": 32, **stats_ms(b32)}),
    ]


def prewhiten(images):
    """davidsandberg's ``facenet.prewhiten`` per image, as the frozen graph expects."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.maximum(std, 1.0 / np.sqrt(x[0].size))


def measure_frozen_graph(s: Settings, output: str) -> list[Row]:
    """The baseline: FaceNet's frozen graph in a TF1 session, one image per ``session.run``
    (its batch is fixed to 1). Prewhitening (numpy) is inside the timed call."""
    from faceattr.models import facenet_graph as fg

    one, many = face_batch(fg.INPUT_SIZE, 1), face_batch(fg.INPUT_SIZE, 32)
    progress(f"{BASELINE}: importing the graph, batch-1 latency ({s.latency_calls} calls)")
    fg.run_frozen_graph(prewhiten(one), output)  # graph import + session, outside the timing
    lat = time_calls(lambda: fg.run_frozen_graph(prewhiten(one), output), s.latency_calls, s.warmup)
    progress(f"{BASELINE}: 32 sequential calls x {s.frozen_b32_calls}")
    b32 = time_calls(lambda: fg.run_frozen_graph(prewhiten(many), output), s.frozen_b32_calls, 0)
    common = {"input_size": fg.INPUT_SIZE, "output": output, "path": "facenet_graph.run_frozen_graph"}
    return [
        Row("latency_b1", BASELINE, round(median(lat) * 1000.0, 3), "ms/face", note="baseline",
            details={**common, **stats_ms(lat)}),
        Row("throughput_b32", BASELINE, round(32 / median(b32), 2), "faces/s",
            note="baseline: 32 sequential batch-1 calls", details={**common, "batch": 32, **stats_ms(b32)}),
    ]


def compare_with_baseline(rows: list[Row]) -> None:
    """Note the facenet model's speed-up over the frozen graph on its latency/throughput rows."""
    by_key = {(r.metric, r.model): r for r in rows if r.status == "ok" and r.value}
    for metric, faster_is_lower in (("latency_b1", True), ("throughput_b32", False)):
        base = by_key.get((metric, BASELINE))
        for ours in (by_key.get((metric, "facenet")), by_key.get((f"{metric}_keras", "facenet"))):
            if base and ours:
                ratio = base.value / ours.value if faster_is_lower else ours.value / base.value
                ours.details["speedup_vs_frozen_graph"] = round(ratio, 2)
                ours.note = (ours.note + "; " if ours.note else "") + f"{ratio:.2f}x the frozen graph's speed"
