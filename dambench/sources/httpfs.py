"""fsspec's HTTP filesystem with bounded timeouts and retries of transient failures.

:class:`RetryingHTTPFileSystem` is what fsspec uses for ``http://`` and ``https://`` once
:mod:`dambench.sources` is imported (:func:`dambench.sources.remote.use_retrying_http`), so every
remote read of the package goes through it: Zarr stores (xarray and zarr's ``FsspecStore``),
netCDF files read in place, downloads by :func:`~dambench.sources.base.local_copy` (ONNX, ``.npy``)
and whole-file reads. Each request (whole file, byte range, size probe, download) is retried under
:func:`dambench.sources.retry.policy`; a 404 stays a ``FileNotFoundError`` (Zarr reads it as a
missing chunk or key), any other failure that is not retried or outlives the retries raises
:class:`~dambench.exceptions.DambenchRemoteError` naming the URL. Needs ``aiohttp`` (the
``dambench[remote]`` extra).
"""

from __future__ import annotations

import aiohttp
from fsspec.asyn import sync, sync_wrapper
from fsspec.implementations.http import HTTPFile, HTTPFileSystem, _file_info
from fsspec.utils import isfilelike

from dambench.sources.retry import permanent_reason, policy, retry_async


async def get_client(**kwargs) -> aiohttp.ClientSession:
    """An aiohttp session whose connect and read timeouts come from the retry policy (a
    ``timeout`` in ``client_kwargs`` wins); there is no total limit, so large files can stream."""
    rules = policy()
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=rules.connect_timeout_s, sock_read=rules.read_timeout_s
    )
    return aiohttp.ClientSession(**{"timeout": timeout, **kwargs})


class RetryingHTTPFileSystem(HTTPFileSystem):
    """``HTTPFileSystem`` whose reads retry transient failures (see the module docstring)."""

    def __init__(self, *args, get_client=get_client, **kwargs):
        super().__init__(*args, get_client=get_client, **kwargs)

    async def _cat_file(self, url, start=None, end=None, **kwargs):
        parent = super()._cat_file
        return await retry_async(url, lambda: parent(url, start=start, end=end, **kwargs))

    async def _get_file(self, rpath, lpath, **kwargs):
        parent = super()._get_file

        async def attempt():
            if isfilelike(lpath):  # a retry starts the copy again
                lpath.seek(0)
                lpath.truncate()
            return await parent(rpath, lpath, **kwargs)

        return await retry_async(rpath, attempt)

    async def _ls_real(self, url, detail=True, **kwargs):
        parent = super()._ls_real
        return await retry_async(url, lambda: parent(url, detail=detail, **kwargs))

    async def _info(self, url, **kwargs):
        """Size and headers of ``url``: HEAD, then GET when HEAD is refused or gives no size.

        Unlike fsspec's, a failure is not turned into ``FileNotFoundError``: only a 404 is.
        """
        session = await self.set_session()
        options = {**self.kwargs, **kwargs}

        def probe(size_policy):
            return _file_info(
                self.encode_url(url), session=session, size_policy=size_policy, **options
            )

        async def head():
            try:
                return await probe("head")
            except aiohttp.ClientResponseError as err:
                if err.status != 404 and permanent_reason(err) is not None:
                    return {}  # a server that refuses HEAD: ask with GET
                raise

        info = await retry_async(url, head)
        if info.get("size") is None:
            info.update(await retry_async(url, lambda: probe("get")))
        return {"name": url, "size": None, **info, "type": "file"}

    async def _exists(self, path, strict=False, **kwargs):
        """True when ``path`` answers, False on 404; other failures raise (a transient one is
        retried first) instead of reading as "absent"."""
        try:
            await self._info(path, **kwargs)
        except FileNotFoundError:
            return False
        return True

    def _open(
        self,
        path,
        mode="rb",
        block_size=None,
        autocommit=None,
        cache_type=None,
        cache_options=None,
        size=None,
        **kwargs,
    ):
        """A random-access file whose range reads retry; files of unknown size (read as a
        stream) and other modes are fsspec's own."""
        block_size = self.block_size if block_size is None else block_size
        info = {} if size else self.info(path, **kwargs)
        size = size or info.get("size")
        if mode != "rb" or not (block_size and size and info.get("partial", True)):
            return super()._open(
                path, mode, block_size, autocommit, cache_type, cache_options, size, **kwargs
            )
        return RetryingHTTPFile(
            self,
            path,
            session=sync(self.loop, self.set_session),
            block_size=block_size,
            mode=mode,
            size=size,
            cache_type=cache_type or self.cache_type,
            cache_options=cache_options or self.cache_options,
            loop=self.loop,
            **{**self.kwargs, "asynchronous": self.asynchronous, **kwargs},
        )


class RetryingHTTPFile(HTTPFile):
    """``HTTPFile`` whose range and whole-file reads retry transient failures."""

    async def async_fetch_range(self, start, end):
        parent = super().async_fetch_range
        return await retry_async(self.url, lambda: parent(start, end))

    _fetch_range = sync_wrapper(async_fetch_range)

    async def async_fetch_all(self):
        parent = super().async_fetch_all
        return await retry_async(self.url, parent)

    _fetch_all = sync_wrapper(async_fetch_all)
