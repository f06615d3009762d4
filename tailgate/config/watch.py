"""Hot reload: poll the config file and hand every good new version to the caller.

The file's (mtime, size, inode) is polled, so edits in place, atomic renames and editors'
write-then-move all count, with no inotify dependency; :meth:`ConfigWatcher.reload` is for
SIGHUP. A broken edit is logged at ERROR with every reason and the last good config stays in
force. Swapping the config in is the caller's business (``on_change``): requests in flight keep
the config object they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from tailgate.config.loader import LoadResult, load_config_file
from tailgate.config.model import Config

logger = logging.getLogger("tailgate.config")

Signature = tuple[int, int, int]
SETTLE_SECONDS = 0.05
"""After a change is seen, wait this long for the writer to finish before reading."""


RESTART_ONLY = ("listen", "database", "workers", "recording")
"""``server`` settings a running gateway cannot change; a reload only warns about them."""


def _warn_about_startup_settings(old: Config, new: Config) -> None:
    for name in RESTART_ONLY:
        if getattr(old.server, name) != getattr(new.server, name):
            logger.warning("config: server.%s changed; it takes effect at the next restart", name)


def _bullets(lines: Iterable[str]) -> str:
    return "".join(f"\n  - {line}" for line in lines)


class ConfigWatcher:
    """Reloads ``path`` when it changes and calls ``on_change`` with each good new config."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[Config], None],
        *,
        environ: Mapping[str, str] = os.environ,
        poll_interval: float = 1.0,
        current: Config | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.poll_interval = poll_interval
        self._on_change = on_change
        self._environ = environ
        self._current = current
        self._signature: Signature | None = None
        self._missing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> Config | None:
        """The last config that loaded (or the one given at construction)."""
        return self._current

    def start(self) -> None:
        """Start polling (needs a running event loop).

        If the file no longer holds the text of the ``current`` config given at construction,
        it is reloaded at once, so an edit made between the first load and now is not missed.
        """
        if self._task is not None:
            return
        self._signature = self._stat()
        if self._current is not None and self._signature is not None:
            result = load_config_file(self.path, self._environ)
            if result.config is None or result.config.source_text != self._current.source_text:
                self._apply(result, "changed before the watch started")
        self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"config watch {self.path}")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reload(self) -> LoadResult:
        """Load the file now, whether or not it changed (SIGHUP); apply it if it is good."""
        self._signature = self._stat()
        result = load_config_file(self.path, self._environ)
        self._apply(result, "reload requested")
        return result

    def check(self) -> LoadResult | None:
        """One poll: reload if the file's signature changed; None when it did not."""
        signature = self._stat()
        if signature is None:
            if not self._missing:
                logger.warning("config file %s is missing; keeping the current config", self.path)
            self._missing = True
            self._signature = None
            return None
        self._missing = False
        if signature == self._signature:
            return None
        self._signature = signature
        result = load_config_file(self.path, self._environ)
        self._apply(result, "file changed")
        return result

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            signature = self._stat()
            if signature is not None and signature != self._signature:
                await asyncio.sleep(min(SETTLE_SECONDS, self.poll_interval))
                if self._stat() != signature:
                    continue
            try:
                self.check()
            except Exception:
                logger.exception("config watch of %s failed; still watching", self.path)

    def _stat(self) -> Signature | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _apply(self, result: LoadResult, reason: str) -> None:
        if result.config is None:
            logger.error(
                "config %s (%s) is not usable; keeping the last good config:%s",
                self.path,
                reason,
                _bullets(result.errors + result.warnings),
            )
            return
        if result.fail_closed:
            logger.error(
                "config %s: refused parts (requests that use them get 429):%s",
                self.path,
                _bullets(result.fail_closed),
            )
        warnings = [w for w in result.warnings if w not in result.fail_closed]
        logger.info(
            "config %s loaded (%s) with %d warning(s)%s",
            self.path,
            reason,
            len(warnings),
            _bullets(warnings + result.notes),
        )
        if self._current is not None:
            _warn_about_startup_settings(self._current, result.config)
        self._current = result.config
        try:
            self._on_change(result.config)
        except Exception:
            logger.exception("applying the new config from %s failed", self.path)
