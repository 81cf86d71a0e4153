"""The local web app (``python src/main.py serve``; floor 8, above distill): upload a photo, see
and correct every face, retrain on the corrections; browse runs and their plots.

Routes over services. ``app`` composes the app (``create_app``) and serves it (``run_server``,
what the ``serve`` command, ``commands/serve.py``, calls). Routes, each a few lines: ``pages``
(the HTML pages), ``api`` (the JSON API under ``/api/``), ``files`` (stored images, run files).
Services, testable without HTTP: ``uploads`` (photos, faces, corrections), ``retrain`` (starting
and following jobs), ``runs`` (the read-only runs browser and its comparisons), built together
in ``services``. Below them: ``photos`` (an upload through the face pipeline), ``jobs`` (the
retrain jobs, one at a time), ``store`` (SQLite and files by random id), ``sessions`` (signed
cookies and CSRF tokens). At the HTTP edge: ``access`` (a request's session and CSRF header),
``errors`` (one-line JSON errors, or a page) and ``guards`` (Host allow-list, upload size while
it streams, security headers, the last-resort 500). ``templates/`` (Jinja2) and ``static/``
(plain JS and CSS).
"""
