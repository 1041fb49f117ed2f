# One image for every service of docker-compose.yml: web (daphne), worker (celery), ingester and
# beat (manage.py ingest / reconcile). Each service picks its process with `command:`.
FROM python:3.11-slim

# SERVE_STATIC=1 (the default): the ASGI app serves /static/ itself (WhiteNoise: hashed, compressed).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SERVE_STATIC=1 \
    DATA_DIR=/app/data

RUN groupadd --system --gid 10001 portal \
    && useradd --system --uid 10001 --gid portal --create-home --home-dir /home/portal portal \
    && useradd --system --uid 10002 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin portal-shell

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml or constraints.txt change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, editable so that BASE_DIR is /app (templates/ and static/ live there).
COPY . .
# collectstatic needs settings: DEBUG=1 and an in-memory database for this step only, so the
# image itself runs with DEBUG off and demands a real SECRET_KEY and DATABASE_URL.
RUN pip install --no-deps -c constraints.txt -e . \
    && DEBUG=1 DATABASE_URL=sqlite:///:memory: python manage.py collectstatic --noinput \
    && mkdir -p "$DATA_DIR" /data/files /data/artifacts \
    && chown portal:portal "$DATA_DIR" /data /data/files /data/artifacts

USER portal

EXPOSE 8000
CMD ["python", "-m", "portal.web", "-b", "0.0.0.0", "-p", "8000", "portal.asgi:application"]
