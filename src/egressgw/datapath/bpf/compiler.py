"""Compile the tc program (snat.bpf.c) with clang, once per source and compiler version.

The object is cached under ``$XDG_CACHE_HOME/egressgw`` (``~/.cache/egressgw``), named by a
hash of the source and the compiler's version, so a changed source rebuilds and the
agent's start does not pay for clang every time. Debian packages what this needs:
clang (and llvm) for the compiler, libbpf-dev for <bpf/bpf_helpers.h>, linux-libc-dev for
<linux/bpf.h>; a missing one is named in the error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
from importlib import resources
from pathlib import Path

from egressgw.errors import DatapathError

SOURCE = "snat.bpf.c"
CFLAGS = ("-O2", "-g", "-target", "bpf", "-Wall")


def source_text() -> str:
    return resources.files(__package__).joinpath(SOURCE).read_text()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "egressgw"


def _multiarch_include() -> list[str]:
    """<asm/types.h> lives under /usr/include/<triplet> on Debian; -target bpf misses it."""
    triplet = sysconfig.get_config_var("MULTIARCH") or ""
    path = Path("/usr/include") / str(triplet)
    return ["-I", str(path)] if triplet and path.is_dir() else []


def _check_headers() -> None:
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise DatapathError("<bpf/bpf_helpers.h> not found: install Debian's libbpf-dev "
                            "(apt-get install libbpf-dev)")
    if not Path("/usr/include/linux/bpf.h").exists():
        raise DatapathError("<linux/bpf.h> not found: install Debian's linux-libc-dev")


def compiler() -> str:
    clang = shutil.which("clang")
    if clang is None:
        raise DatapathError("clang not found: the BPF datapath is compiled with Debian's "
                            "clang (apt-get install clang llvm libbpf-dev bpftool)")
    return clang


def build(*, cache: Path | None = None) -> Path:
    """The compiled object, built now if the cache does not hold this source's build."""
    clang = compiler()
    version = subprocess.run([clang, "--version"], capture_output=True, text=True,
                             check=False).stdout
    text = source_text()
    digest = hashlib.sha256((text + version + " ".join(CFLAGS)).encode()).hexdigest()[:16]
    out_dir = cache or cache_dir()
    target = out_dir / f"snat-{digest}.bpf.o"
    if target.exists():
        return target
    _check_headers()
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"snat-{digest}.bpf.c"
    src.write_text(text)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run([clang, *CFLAGS, *_multiarch_include(), "-c", str(src), "-o",
                           str(tmp)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DatapathError(f"clang failed on {SOURCE}: {done.stderr.strip()[-2000:]}")
    tmp.replace(target)
    return target
