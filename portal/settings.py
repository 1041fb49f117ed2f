"""Settings, read from the environment (see the README for every variable)."""

import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from workers import config
from workers.config import (
    REDIS_URL,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = config.data_dir()

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set unless DEBUG=1")
    SECRET_KEY = "insecure-development-key"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "portal",
    "accounts",
    "nodes",
    "jobs",
    "alerts",
    "schedules",
    "audit",
    "spaces",
    "axes",
    "csp",
    "usage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "common.middleware.NulCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "common.errors.DomainErrorMiddleware",
    # Last: it answers 429 for a sign-in refused because of earlier failures.
    "axes.middleware.AxesMiddleware",
]

# Every page: scripts, styles and images from the portal only, no inline script (pages start
# their scripts from static/portal/pages.js); inline styles stay allowed for the charts.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Behind HTTPS (TLS ended here or at a proxy that sets X-Forwarded-Proto): cookies only over
# HTTPS, HSTS, plain HTTP redirected. HSTS preload is the operator's choice (HSTS_PRELOAD=1).
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]  # preload not asked for: a decision, not a slip

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL is the truth in production; SQLite under DATA_DIR is the local default.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'portal.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("DB_POOL", True):
    # A connection pool per process: opening a PostgreSQL connection per request costs ~4 ms.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Kept beside what the URL's query says (sslmode=verify-full, sslrootcert=...).
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "pool": {"min_size": 1, "max_size": env_int("DB_POOL_MAX", 10), "timeout": 30},
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed sign-ins (the login page and the admin's), bad API tokens and bad websocket tokens are
# counted per client address and per user name (django-axes, in the shared cache): past
# AUTH_FAILURE_LIMIT of either, that address or name is refused with 429 for AUTH_LOCKOUT_S.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_FAILURE_LIMIT = env_int("AUTH_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(seconds=env_float("AUTH_LOCKOUT_S", 900.0))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.guard.lockout_response"
AXES_VERBOSE = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "portal.staticfiles.PlotlyFinder",
]
SERVE_STATIC = env_bool("SERVE_STATIC", True)
# collectstatic writes hashed names and a gzip copy of each file; WhiteNoise serves those with a
# year-long immutable Cache-Control and the compressed copy to browsers that take it. Without a
# collectstatic (the tests, a checkout that never ran `make run`), files keep their plain names
# and are served from the folders they live in, cached for a minute.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "portal.staticfiles.HashedStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_KEEP_ONLY_HASHED_FILES = True  # the plain names come from the finders
# Nothing collected yet is expected (see above), not worth a warning at every start.
warnings.filterwarnings("ignore", message="No directory at: ")
if SERVE_STATIC:
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# Request bodies over this many bytes get 413 before anything reads them (portal.web, as they
# arrive; portal.bodylimit, at the ASGI level); one not all in after this many seconds, 408.
MAX_BODY_BYTES = env_int("MAX_BODY_BYTES", 1_048_576)
REQUEST_BODY_TIMEOUT_S = env_float("REQUEST_BODY_TIMEOUT_S", 30.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES

REDIS_URL = REDIS_URL
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": config.REDIS_PREFIX},
    }
}

# The cache holds request counts for throttling; in Redis, so that every web process counts
# together. Its keys start with PORTAL_REDIS_PREFIX; cache.clear() empties the whole database.
CACHES = {
    "default": {
        "BACKEND": "common.cache.PortalRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": config.REDIS_PREFIX,
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["common.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "common.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # 429 with Retry-After past these; POST /api/v1/jobs/ (and retry) also counts as `submit`.
    "DEFAULT_THROTTLE_CLASSES": ["common.throttling.UserThrottle",
                                 "common.throttling.AnonThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_rate("THROTTLE_USER_RATE", "1200/min"),
        "anon": env_rate("THROTTLE_ANON_RATE", "120/min"),
        "submit": env_rate("THROTTLE_SUBMIT_RATE", "120/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cluster portal API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Operations grouped by what they act on (jobs, nodes, schedules, ...), not all as "v1".
    "SCHEMA_PATH_PREFIX": r"/api/v1/",
    "SWAGGER_UI_SETTINGS": {"tagsSorter": "alpha", "docExpansion": "list", "deepLinking": True},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "/static/portal/favicon.svg",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JobStateEnum": "jobs.models.JobState",
        "AttemptStateEnum": "jobs.models.AttemptState",
        "NodeStateEnum": "nodes.models.NodeState",
    },
}

# Jobs.
JOB_QUEUES = env_list("JOB_QUEUES", ["cpu", "etl", "train", "gpu"])
JOB_DEFAULT_TIMEOUT_S = env_int("JOB_DEFAULT_TIMEOUT_S", 24 * 3600)
JOB_MAX_TIMEOUT_S = env_int("JOB_MAX_TIMEOUT_S", 7 * 24 * 3600)
JOB_DEFAULT_MAX_ATTEMPTS = env_int("JOB_DEFAULT_MAX_ATTEMPTS", 3)
JOB_MAX_BATCH = env_int("JOB_MAX_BATCH", 1000)
# Jobs admitted to a queue beyond its online slots, per slot (they wait in the broker, so a
# worker does not idle between two admission passes; fewer keeps fair share tighter).
ADMIT_AHEAD = env_float("ADMIT_AHEAD", 1.0)
# For a queue where one team alone waits: also as many of its jobs as the queue ran for at most
# this many seconds and ended in the last this many seconds, at most 8 per online slot, of
# those jobs' kinds (jobs.admission.Room; 0 turns it off).
ADMIT_AHEAD_S = env_float("ADMIT_AHEAD_S", 0.5)
# Seconds a queued job's message may be missing from Redis before it is dispatched again.
DISPATCH_GRACE_S = env_float("DISPATCH_GRACE_S", 5.0)
RECONCILE_EVERY_S = env_float("RECONCILE_EVERY_S", 2.0)
NODE_OFFLINE_S = env_float("NODE_OFFLINE_S", 30.0)
# Per websocket stream, at most one frame per this many seconds; what arrives between is merged.
LIVE_COALESCE_S = env_float("LIVE_COALESCE_S", 0.05)
# How often an open websocket checks again that its user may still see what it streams.
WS_ACCESS_RECHECK_S = env_float("WS_ACCESS_RECHECK_S", 15.0)
# Schedules: at most this many per team, none running more often than every this many seconds.
SCHEDULES_PER_TEAM = env_int("SCHEDULES_PER_TEAM", 50)
SCHEDULE_MIN_INTERVAL_S = env_float("SCHEDULE_MIN_INTERVAL_S", 300.0)
LIVE_CLUSTER_COALESCE_S = env_float("LIVE_CLUSTER_COALESCE_S", 1.0)
# A node's card on the dashboards is sent again only when a figure moved this many percentage
# points (or its state or job count changed), or after LIVE_NODE_REFRESH_S.
LIVE_NODE_DELTA = env_float("LIVE_NODE_DELTA", 3.0)
LIVE_NODE_REFRESH_S = env_float("LIVE_NODE_REFRESH_S", 15.0)
# Utilization history: raw samples for this many hours, one-minute rollups for this many days.
NODE_SAMPLES_RAW_H = env_float("NODE_SAMPLES_RAW_H", 24.0)
NODE_MINUTES_DAYS = env_float("NODE_MINUTES_DAYS", 30.0)
# Usage accounting: one row per ended attempt for USAGE_ATTEMPTS_KEEP_DAYS, folded into per-day
# figures kept USAGE_KEEP_DAYS, whatever becomes of the jobs themselves.
USAGE_KEEP_DAYS = env_float("USAGE_KEEP_DAYS", 400.0)
USAGE_ATTEMPTS_KEEP_DAYS = env_float("USAGE_ATTEMPTS_KEEP_DAYS", 35.0)
# The dashboard's feed of cluster events: the newest FEED_KEEP events, none older than
# FEED_KEEP_DAYS (pruned once a minute).
FEED_KEEP = env_int("FEED_KEEP", 10_000)
FEED_KEEP_DAYS = env_float("FEED_KEEP_DAYS", 14.0)
# Fair share with memory: core-seconds used decay with this half-life in hours; 0 orders teams
# by what they hold right now only.
FAIR_SHARE_HALF_LIFE_H = env_float("FAIR_SHARE_HALF_LIFE_H", 168.0)
# Preemption back to fair share (off unless 1); a job runs at least PREEMPT_MIN_RUN_S first.
PREEMPTION = env_bool("PREEMPTION", False)
PREEMPT_MIN_RUN_S = env_float("PREEMPT_MIN_RUN_S", 300.0)
# Capacity: the backlog each queue should drain within (portal_queue_nodes_wanted), and a
# known ceiling of the warehouse's load rate in rows per second (0: none known).
TARGET_DRAIN_S = env_float("TARGET_DRAIN_S", 3600.0)
WAREHOUSE_MAX_ROWS_PER_S = env_float("WAREHOUSE_MAX_ROWS_PER_S", 0.0)

# Alerts: mail goes through Django's email backend (the console by default), webhooks get a POST.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
ALERT_FROM_EMAIL = env_str("ALERT_FROM_EMAIL", "portal@localhost")
ALERT_WEBHOOK_TIMEOUT_S = env_float("ALERT_WEBHOOK_TIMEOUT_S", 5.0)
# Webhooks go to public addresses only (checked after the name is resolved), unless this is set
# for a site whose receivers live on its own network.
ALERT_WEBHOOK_ALLOW_PRIVATE = env_bool("ALERT_WEBHOOK_ALLOW_PRIVATE", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
