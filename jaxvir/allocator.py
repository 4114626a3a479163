"""The host allocator: jaxvir's commands run under tcmalloc (or jemalloc) where it is installed.

XLA:CPU allocates and frees large temporary buffers every step. glibc's malloc serves buffers
of that size with fresh mappings and returns them to the kernel when freed, so every step pays
the page faults and zeroing again; tcmalloc and jemalloc keep the memory for the next step.
Results are bitwise the same under every allocator; only speed changes (numbers in
`benchmarks/README.md`). The price: a process stays near its peak resident memory instead of
dropping between steps (the Twin-VAE benchmark at batch 128 held 6.2 GB under tcmalloc; under
glibc it peaked at 5.4 GB and fell to 2.3 GB), so where memory is tight use
`JAXVIR_ALLOCATOR=system`.

A running process cannot change its allocator, so an entry point calls `use_preferred()` first,
before JAX is imported: when a preferred allocator is installed and not loaded yet, it runs the
same command again (`os.execve`) with the library in `LD_PRELOAD`:

  if __name__ == "__main__":  # first: may rerun this command under tcmalloc
    from jaxvir import allocator
    allocator.use_preferred()

`JAXVIR_ALLOCATOR` chooses: `auto` (default: tcmalloc where installed), `tcmalloc`, `jemalloc`
or `system` (never rerun). jemalloc is not the default: with its default settings it returned
XLA's buffers to the kernel as glibc does (as many page faults per ResNet-50 step as glibc).
Importing jaxvir never reruns anything.
"""

import os
import pathlib
import platform
import sys
import sysconfig
from collections.abc import Callable, Mapping

ENV_VAR = "JAXVIR_ALLOCATOR"
AUTO = "tcmalloc"  # what `auto` runs under
# Shared-library file names of each allocator.
LIBRARIES = {
  "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
  "jemalloc": ("libjemalloc.so.2",),
}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}  # Debian's
CHOICES = ("auto", *LIBRARIES, "system")
# gperftools' tcmalloc writes a stack trace to stderr for each allocation above 1 GiB by default.
SETTINGS = {"tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}, "jemalloc": {}}
GAIN = "makes training steps on CPU about 15-25% faster and steadier"


def library_dirs(environ: Mapping[str, str] = os.environ) -> list[pathlib.Path]:
  """Where shared libraries are usually installed, the loader's extra path first."""
  multiarch = sysconfig.get_config_var("MULTIARCH") or platform.machine() + "-linux-gnu"
  extra = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
  return [
    *map(pathlib.Path, extra),
    pathlib.Path(sys.prefix) / "lib",  # conda and similar environments
    *(pathlib.Path(root) / multiarch for root in ("/usr/local/lib", "/usr/lib", "/lib")),
    *map(pathlib.Path, ("/usr/local/lib", "/usr/lib64", "/usr/lib", "/lib64", "/lib")),
  ]


def find(name: str) -> str | None:
  """The path of allocator `name`'s shared library, or None where it is not installed.

  Example:

    >>> find("tcmalloc")  # with Debian's libtcmalloc-minimal4
    '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'
  """
  for filename in LIBRARIES[name]:
    for directory in library_dirs():
      if (directory / filename).is_file():
        return str(directory / filename)
  return None


def loaded(maps: str | None = None) -> str | None:
  """The allocator whose library this process has loaded, from `/proc/self/maps`, or None."""
  if maps is None:
    try:
      maps = pathlib.Path("/proc/self/maps").read_text()
    except OSError:
      return None
  for name, filenames in LIBRARIES.items():
    if any(f"/{filename}" in maps for filename in filenames):
      return name
  return None


def choice(environ: Mapping[str, str] = os.environ) -> str:
  """`JAXVIR_ALLOCATOR`'s value (default `auto`); raises ValueError for an unknown one."""
  value = environ.get(ENV_VAR, "").strip().lower() or "auto"
  if value not in CHOICES:
    options = ", ".join(CHOICES)
    raise ValueError(f"{ENV_VAR}={value!r} is not one of {options}; unset it or pick one")
  return value


def rerun_environment(
  environ: Mapping[str, str],
  *,
  loaded_name: str | None,
  find: Callable[[str], str | None] = find,
) -> dict[str, str] | None:
  """The environment to rerun this command with, or None to go on as it is.

  None when `JAXVIR_ALLOCATOR=system`, when an allocator is loaded already, when the one
  wanted is not installed, and when its library is in `LD_PRELOAD` but did not load (no loop).
  """
  wanted = choice(environ)
  if wanted == "system" or loaded_name is not None:
    return None
  name = AUTO if wanted == "auto" else wanted
  path, preload = find(name), environ.get("LD_PRELOAD", "")
  if path is None or path in preload.replace(" ", ":").split(":"):
    return None
  # Libraries the user preloads stay first, so that theirs wins if one is an allocator too.
  return {**SETTINGS[name], **environ, "LD_PRELOAD": f"{preload}:{path}" if preload else path}


def system_malloc() -> str:
  """The C library's malloc, e.g. `glibc 2.36 malloc`."""
  libc, version = platform.libc_ver()
  return f"{libc} {version} malloc" if libc else "system malloc"


def current() -> str:
  """The allocator in use: `tcmalloc`, `jemalloc` or the system's (`glibc 2.36 malloc`)."""
  return loaded() or system_malloc()


def describe(
  environ: Mapping[str, str] = os.environ,
  *,
  loaded_name: str | None,
  find: Callable[[str], str | None] = find,
) -> str:
  """One line naming the allocator in use; without a faster one, how to install it."""
  wanted = choice(environ)
  if loaded_name is not None:
    return f"allocator: {loaded_name} (LD_PRELOAD; {ENV_VAR}=system for the system's malloc)"
  if wanted == "system":
    return f"allocator: {system_malloc()} ({ENV_VAR}=system)"
  if wanted != "auto" and find(wanted) is None:
    return (
      f"allocator: {system_malloc()}; {ENV_VAR}={wanted} but it is not installed: "
      f"apt-get install {PACKAGES[wanted]}"
    )
  path = find(AUTO if wanted == "auto" else wanted)
  if path is not None:
    return f"allocator: {system_malloc()}; {path} is installed but not loaded"
  return (
    f"allocator: {system_malloc()}; apt-get install {PACKAGES[AUTO]} (or your "
    f"distribution's gperftools package) {GAIN}"
  )


def use_preferred() -> None:
  """Reruns this command under tcmalloc or jemalloc where installed; prints the allocator used.

  Call it from an entry point's `if __name__ == "__main__":` block before importing JAX (a
  rerun repeats whatever was imported before). The one line naming the allocator goes to
  stderr, from the process that goes on. Outside Linux (no `LD_PRELOAD`) and for code read
  from stdin (which cannot be read again) nothing is rerun.
  """
  if sys.platform != "linux":
    print(f"allocator: {system_malloc()}", file=sys.stderr)
    return
  try:
    choice()
  except ValueError as error:
    raise SystemExit(f"error: {error}") from None
  if sys.argv[0] not in ("", "-"):
    environment = rerun_environment(os.environ, loaded_name=loaded())
    if environment is not None:
      sys.stdout.flush()
      sys.stderr.flush()
      os.execve(sys.executable, sys.orig_argv, environment)
  print(describe(loaded_name=loaded()), file=sys.stderr)
