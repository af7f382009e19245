"""Where stores live: local paths and fsspec URLs (``s3://``, ``gs://``, ...).

One place for what object storage needs and a local disk does not:

* **options** (:func:`resolve_options`): the ``storage_options`` given by the caller (job file,
  ``--storage-option``, keyword) over the environment (``AWS_ENDPOINT_URL[_S3]``; credentials and
  region are read by botocore itself from the standard ``AWS_*`` variables, a profile or an
  instance role), plus retries with backoff for every S3 request (``cfact.storage.retries``).
* **scope** (:func:`scope`): zarr / xarray open a URL string by asking fsspec for a filesystem;
  while a run writes its store, the output's options are fsspec's defaults for that protocol, so
  every writer and reader in the pipeline (sketch, checkpoints, factors, recovery,
  reconstruction) reaches the same bucket with the same options without each taking an extra
  argument. The filesystem objects zarr builds carry their options when pickled, so the workers
  of a distributed cluster use them too.
* **existence and removal** of a store (:func:`exists`, :func:`remove`): object stores have no
  directories and no rename; a store "exists" when any object lies under its prefix.
* **errors** (:func:`storage_error`): a missing bucket, a denied request, or an endpoint that
  does not answer after the retries become one :class:`~cfact_dask.errors.CfactError` that names
  the URL, the endpoint and the fix.
* **secrets** (:func:`scrub`, :func:`redact`, :func:`public_options`): credentials are never
  recorded; only the endpoint and region are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from .. import config
from ..errors import (
    CfactError,
    ConfigError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)

__all__ = [
    "check_bucket",
    "cli_scope",
    "exists",
    "is_remote",
    "public_options",
    "redact",
    "remove",
    "resolve_options",
    "scope",
    "scrub",
    "set_default_options",
    "storage_error",
]

#: option names (any nesting, case-insensitive) whose values are credentials
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "passwd", "session_token", "access_key",
    "secret_key", "access_key_id", "secret_access_key", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "account_key", "sas_token", "client_secret",
    "credential", "credentials", "connection_string", "authorization", "refresh_token",
})
#: environment variables whose values are credentials (redacted from messages)
#: (not AWS_ACCESS_KEY_ID: an identifier, not a secret, and often a common word with test servers)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_SAS_TOKEN")
#: shorter values are not redacted from messages (they would mangle ordinary words)
_MIN_SECRET = 8
_S3 = ("s3", "s3a")
#: options given on the command line (``--storage-option``), under any given per store
_DEFAULTS: dict[str, Any] = {}
#: credential values seen in options this process resolved (redacted from messages)
_SECRETS: set[str] = set()


def is_remote(path: Any) -> bool:
    """True for an fsspec URL (``s3://``, ``gs://``, ``memory://``...), False for a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def set_default_options(options: Mapping[str, Any] | None) -> None:
    """Options for every remote store of this process (the CLI's ``--storage-option``)."""
    _DEFAULTS.clear()
    if options:
        _DEFAULTS.update(_checked(options, "--storage-option"))
        _remember(_DEFAULTS)


def _checked(given: Any, what: str) -> dict[str, Any]:
    if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
        raise ConfigError(
            f"{what} must be a mapping of fsspec options (e.g. {{endpoint_url: "
            f"'https://s3.example.org', anon: false}}), got {type(given).__name__}"
        )
    return dict(given)


def resolve_options(url: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options to open ``url`` with: ``given`` over the command line's over the
    environment, with retries for S3 requests. Empty for local paths."""
    if not is_remote(url):
        return {}
    opts: dict[str, Any] = dict(_DEFAULTS)
    if given:
        opts.update(_checked(given, "storage_options"))
    if protocol(url) in _S3:
        # botocore retries throttling, 5xx, reset and refused connections and timeouts with
        # exponential backoff (at most 20 s a wait); s3fs retries "SlowDown" on top
        ck = dict(opts.get("config_kwargs") or {})
        ck.setdefault("retries", {"max_attempts": int(config.get("storage.retries", 10)),
                                  "mode": str(config.get("storage.retry-mode", "standard"))})
        opts["config_kwargs"] = ck
        if "endpoint_url" not in opts and not (opts.get("client_kwargs") or {}).get(
                "endpoint_url"):
            env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if env:
                opts["endpoint_url"] = env
    _remember(opts)
    return opts


def _remember(opts: Any) -> None:
    if isinstance(opts, Mapping):
        for k, v in opts.items():
            if (str(k).lower() in CREDENTIAL_KEYS and isinstance(v, str)
                    and len(v) >= _MIN_SECRET):
                _SECRETS.add(v)
            else:
                _remember(v)


def public_options(url: str, opts: Mapping[str, Any] | None) -> dict[str, Any]:
    """What may be recorded about how ``url`` was reached: its endpoint and region, never
    credentials."""
    if not is_remote(url):
        return {}
    opts = opts or {}
    ck = opts.get("client_kwargs") or {}
    out = {"protocol": protocol(url),
           "endpoint_url": opts.get("endpoint_url") or ck.get("endpoint_url"),
           "region": ck.get("region_name") or opts.get("region_name") or opts.get("region")}
    return {k: _strip_userinfo(v) if isinstance(v, str) else v
            for k, v in out.items() if v is not None}


def _strip_userinfo(url: str) -> str:
    # https://user:pass@host/ -> https://host/
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def redact(text: str) -> str:
    """``text`` with every known credential value replaced by ``***``."""
    secrets = set(_SECRETS)
    secrets.update(v for v in (os.environ.get(k) for k in _SECRET_ENV)
                   if v and len(v) >= _MIN_SECRET)
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, strings) with credential keys dropped and known
    credential values redacted: safe to store in attributes, reports and logs."""
    if isinstance(obj, Mapping):
        return {k: scrub(v) for k, v in obj.items() if str(k).lower() not in CREDENTIAL_KEYS}
    if isinstance(obj, list | tuple):
        return type(obj)(scrub(v) for v in obj)
    if isinstance(obj, str):
        return redact(obj)
    return obj


@contextlib.contextmanager
def scope(url: str | None, options: Mapping[str, Any] | None) -> Iterator[None]:
    """While inside, fsspec opens ``url``'s protocol with ``options`` by default.

    zarr and xarray take a URL string and ask fsspec for the filesystem; this is how options
    reach every writer and reader of a run store without threading them through each one.
    Explicit options (an input opened with its own) still win. Not for concurrent runs with
    different options in one process.
    """
    if url is None or not is_remote(url) or not options:
        yield
        return
    import fsspec.config

    protos = _S3 if protocol(url) in _S3 else (protocol(url),)
    saved = {p: fsspec.config.conf.get(p) for p in protos}
    try:
        for p in protos:
            fsspec.config.conf[p] = {**(saved[p] or {}), **options}
        yield
    finally:
        for p, v in saved.items():
            if v is None:
                fsspec.config.conf.pop(p, None)
            else:
                fsspec.config.conf[p] = v


@contextlib.contextmanager
def cli_scope(options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """For a command: ``options`` (``--storage-option``) become the defaults of every remote
    store it opens; S3 URLs opened anywhere also get the retries and the environment's
    endpoint. Everything is restored on exit (commands run in-process, e.g. in tests)."""
    saved = dict(_DEFAULTS)
    try:
        set_default_options(options)
        with contextlib.ExitStack() as stack:
            stack.enter_context(scope("s3://", resolve_options("s3://")))
            if _DEFAULTS:
                for proto in ("gs", "gcs", "az", "abfs", "abfss"):
                    stack.enter_context(scope(f"{proto}://", dict(_DEFAULTS)))
            yield
    finally:
        _DEFAULTS.clear()
        _DEFAULTS.update(saved)


def _fs(url: str, options: Mapping[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url, **dict(options or {}))


def exists(url: str, options: Mapping[str, Any] | None = None) -> bool:
    """True when anything lies at ``url`` (a file, a directory, or objects under a prefix)."""
    if not is_remote(url):
        return os.path.exists(url)
    try:
        fs, path = _fs(url, options)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))
    except Exception as e:  # noqa: BLE001 - classified below
        err = storage_error(e, url, "checking whether a store exists at", options)
        if err is None:
            raise
        raise err from e


def check_bucket(url: str, options: Mapping[str, Any] | None = None) -> None:
    """Raise the clear error when ``url``'s bucket is missing or may not be listed."""
    if protocol(url) not in _S3:
        return
    try:
        fs, path = _fs(url, options)
        fs.ls(path.split("/", 1)[0], refresh=True)
    except Exception as e:  # noqa: BLE001 - classified below
        err = storage_error(e, url, "opening", options)
        if err is not None:
            raise err from e


def remove(url: str, options: Mapping[str, Any] | None = None) -> None:
    """Delete everything under ``url`` (the caller has checked that cfact may)."""
    import shutil

    if not is_remote(url):
        if os.path.isdir(url):
            shutil.rmtree(url)
        elif os.path.exists(url):
            os.remove(url)
        return
    try:
        fs, path = _fs(url, options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.invalidate_cache(path)
    except Exception as e:  # noqa: BLE001 - classified below
        err = storage_error(e, url, "removing", options, write=True)
        if err is None:
            raise
        raise err from e


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _code(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, Mapping):
        return str((resp.get("Error") or {}).get("Code") or "")
    return ""


_DENIED = ("AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken")
_UNAVAILABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ConnectionClosedError", "ClientConnectorError", "ServerDisconnectedError",
                "ClientOSError", "TimeoutError", "ConnectionRefusedError", "ConnectionResetError",
                "ProxyConnectionError")


def storage_error(e: BaseException, url: str, doing: str,
                  options: Mapping[str, Any] | None = None, *,
                  write: bool = False) -> CfactError | None:
    """One clear error for a failed request to the remote store at ``url``, or None when ``e``
    is not a storage failure (then the caller re-raises it unchanged).

    ``doing`` says what was attempted ("opening", "writing the run store"...).
    """
    if not is_remote(url) or (isinstance(e, CfactError) and not isinstance(e, OSError)):
        return None
    pub = public_options(url, options or resolve_options(url))
    ep = pub.get("endpoint_url")
    where = f"{url!r}" + (f" (endpoint {ep})" if ep else "")
    names = [type(x).__name__ for x in _chain(e)]
    codes = [_code(x) for x in _chain(e)]
    text = redact("; ".join(dict.fromkeys(str(x) for x in _chain(e) if str(x))))[:300]
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if "NoSuchBucket" in codes or "bucket does not exist" in text.lower():
        return StoreNotFoundError(
            f"{doing} {where} failed: the bucket {bucket!r} does not exist ({text}); create the "
            f"bucket first (e.g. `aws s3 mb {protocol(url)}://{bucket}`), or fix the URL or the "
            f"endpoint (storage_options endpoint_url, or AWS_ENDPOINT_URL)"
        )
    if ("NoCredentialsError" in names or "PartialCredentialsError" in names
            or any(c in _DENIED for c in codes) or any(n == "PermissionError" for n in names)
            or any(d in text for d in ("AccessDenied", "Forbidden", "InvalidAccessKeyId"))):
        need = ("s3:PutObject, s3:DeleteObject, s3:GetObject and s3:ListBucket" if write
                else "s3:GetObject and s3:ListBucket")
        return StoreAccessError(
            f"{doing} {where} was refused: access denied ({text}); the credentials in use "
            f"(storage_options key / secret or profile, AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY, or the machine's role) need {need} on it: fix the "
            f"credentials or the bucket policy, or choose a location you may "
            f"{'write' if write else 'read'}"
        )
    if any(n in _UNAVAILABLE for n in names) or isinstance(e, ConnectionError | TimeoutError):
        tries = int(config.get("storage.retries", 10))
        return StoreUnavailableError(
            f"{doing} {where} failed: the object store did not answer, also after {tries} "
            f"attempts with backoff ({text}); check the endpoint and the network (and "
            f"cfact.storage.retries), then run again (`cfact run --resume` continues a run "
            f"from its last completed stage)"
        )
    return None
