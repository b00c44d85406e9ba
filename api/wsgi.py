"""The WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'``.

`switchyard api` serves the same app with gunicorn in process (api/serve.py), building it in each worker
from settings it read once; this module builds it from the environment at import, in each worker that
imports it (without ``--preload``).
"""

from api import create_app

app = create_app()
