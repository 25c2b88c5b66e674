"""An application's own Celery app with the upscale task registered on it (as the docs show)."""

from celery import Celery

from ideogram_async.celery import celery_config, register

app = Celery("my_pipeline")
app.conf.update(celery_config())  # or your own settings: these suit the upscale task
upscale = register(app)
