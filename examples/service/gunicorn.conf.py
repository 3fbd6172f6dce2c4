"""gunicorn config for the airports service: each worker attaches after the fork (two lines)."""

from hollow.gunicorn import hooks

post_worker_init, worker_exit = hooks("airports")

bind = "127.0.0.1:8000"
workers = 4
# --preload is safe (the dataset is opened per worker, after the fork) but buys nothing here,
# since the data is shared anyway; under uvicorn workers it cost about 7% of throughput
# (bench/README.md), so it stays off
preload_app = False
