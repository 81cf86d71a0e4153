"""The local web app (``python src/main.py serve``; floor 8, above distill): upload a photo, see
and correct every face, retrain on the corrections; browse runs and their plots.

Modules: ``app`` (routes, ``run_server``), ``guards`` (Host allow-list, upload size while
it streams, security headers, the last-resort 500), ``sessions`` (signed cookies and CSRF
tokens), ``store`` (SQLite and files by random id), ``photos`` (an upload through the face
pipeline), ``jobs`` (the retrain jobs, one at a time), ``runs`` (the read-only runs browser);
``templates/`` (Jinja2) and ``static/`` (plain JS and CSS).
"""
