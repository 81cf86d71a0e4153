"""Inference: image or frame -> detect -> crop with margin (aligned when landmarks exist) ->
``Predictor`` (the saved model's own preprocessing) -> labels with confidences -> tracks
(video) -> annotated output and result rows.

Modules:

- ``detectors``: ``Detection`` and ``make_detector`` (Haar, MTCNN, or the whole image).
- ``crop``: ``crop_face``, the square margin crop the model was trained on.
- ``images``: ``expand_inputs`` (files, folders, globs) and ``read_image`` (robust decoding).
- ``predictor``: ``Predictor``, face crops -> ``FacePrediction`` in batches; shared by
  ``run``, ``evaluate`` and any later front end, independent of Hydra.
- ``runtime``: what runs the network: the model folder's TensorFlow Lite export (LiteRT, no
  TensorFlow import) or its Keras model (``run.backend``).
- ``tracking``: ``IoUTracker``, stable ids and smoothed labels across video frames.
- ``annotate``: boxes, labels and FPS text drawn onto images.
- ``run``: ``run_command``, the ``python src/main.py run`` command (images and video).
"""
