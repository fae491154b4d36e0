"""What stops an origin from working, found before the appliance listens.

Rules it keeps:
- an origin that cannot work (a ``file://`` directory that is missing or not
  readable, an S3 origin with no credentials anywhere botocore looks) is not a
  configuration error: the directory may be mounted later, credentials may
  arrive, and what the store holds is served meanwhile. It is a warning at
  start, and the origin starts as failing with this reason (``/_edge/health``);
- nothing here talks to an origin over the network (an HTTP origin, or an S3
  endpoint that is down, shows up as failing on its first miss); botocore's
  credential chain may ask the instance metadata service (about a second when
  there is none);
- it answers a sentence naming the problem, or ``None``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from edge.origin import OriginSettings

S3_CREDENTIALS = (
    "s3_access_key_id and s3_secret_access_key, AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or an instance role"
)


def start_problem(url: str, settings: OriginSettings) -> str | None:
    """Why the origin at ``url`` cannot work, or ``None`` when nothing is known against it."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return _directory_problem(parts.path)
    if parts.scheme == "s3":
        return _s3_problem(settings)
    return None


def _directory_problem(path: str) -> str | None:
    if not os.path.exists(path):
        return f"the directory {path} does not exist"
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"the directory {path} cannot be read by this user"
    return None


def _s3_problem(settings: OriginSettings) -> str | None:
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        return None
    import botocore.session

    try:
        credentials = botocore.session.Session().get_credentials()
    except Exception as exc:  # a broken ~/.aws/config, say: botocore says what
        return f"cannot look up S3 credentials: {exc}"
    if credentials is None:
        return f"no S3 credentials (give {S3_CREDENTIALS})"
    return None
