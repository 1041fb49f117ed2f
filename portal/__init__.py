"""The portal: a Django project served over ASGI, with the Celery app beside it."""
