"""Inference (floor 4, above models): image or frame -> detect -> align onto the chip template
(or crop the box with margin) -> ``Predictor`` (the saved model's own preprocessing) -> labels
with confidences -> tracks (video) -> annotated output and result rows.

Modules:

- ``detection``: ``Detection``, one face (box, score, landmarks in ``faceattr.landmarks`` order).
- ``detectors``: ``make_detector`` (MTCNN, Haar, or the whole image); ``mtcnn_numpy``: MTCNN's
  networks and cascade in NumPy (no TensorFlow import).
- ``align``: the chip template and ``align_face``, a face mapped onto it by its landmarks.
- ``chips``: training photos onto the chip template, cached; ``align_training_photos`` is the
  aligner the commands hand the data step (``data.prepare``).
- ``crop``: ``crop_face``, the square box crop with margin (faces without usable landmarks).
- ``pipeline``: ``FacePipeline``, image -> faces as the model sees them -> predictions; shared
  by ``run`` and ``evaluate --labels``.
- ``images``: ``expand_inputs`` (files, folders, globs) and ``read_image`` (robust decoding).
- ``predictor``: ``Predictor``, face crops -> ``FacePrediction`` in batches; shared by
  ``run``, ``evaluate`` and any later front end, independent of Hydra.
- ``runtime``: what runs the network: the model folder's TensorFlow Lite export (LiteRT, no
  TensorFlow import) or its Keras model (``run.backend``).
- ``tracking``: ``IoUTracker``, stable ids and smoothed labels across video frames.
- ``annotate``: boxes, labels and FPS text drawn onto images.
- ``run``: ``run_inputs``, the ``run`` command's work: checks, then images or video.
- ``photos_batch``: ``run --img`` (reading, batched prediction, annotated copies, CSV/JSON rows).
- ``video``: ``run --video`` (the capture loop, the ``InferenceWorker`` thread, the tracking
  process, and the per-frame timing hook ``on_frame``).
- ``display``: whether a window can be opened here (probed in a child process), and showing one.
- ``outputs``: output files and folders checked writable, no silent overwrite.
"""
