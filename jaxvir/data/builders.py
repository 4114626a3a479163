"""The base of jaxvir's tensorflow-datasets builders: array_record caches that log, not print.

tfds prints "Downloading and preparing dataset Unknown size ..." and a progress bar for every
build, although nothing is downloaded: jaxvir's builders write a local cache. Subclassing
`CacheBuilder` instead of `tfds.core.GeneratorBasedBuilder` says it in one log line.

Example:

  >>> class MyImages(CacheBuilder):  # doctest: +SKIP
  ...   VERSION = tfds.core.Version("1.0.0")
"""

import logging

import tensorflow_datasets as tfds

log = logging.getLogger("jaxvir")


class CacheBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` whose build announces itself as one `jaxvir` log line."""

  def _log_download_bytes(self) -> None:
    log.info("preparing the array_record cache in %s (once)", self.data_dir)

  def _log_download_done(self) -> None:
    log.info("cache ready: %s", self.data_dir)
