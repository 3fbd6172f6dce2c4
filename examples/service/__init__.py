"""A small web service over the airports namespace (WSGI, gunicorn)."""
