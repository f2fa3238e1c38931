"""The bpf(2) system call through ctypes: create, pin, open and walk maps; load, open and
test-run programs.

Only the commands egressgw needs, with the attribute layouts of ``union bpf_attr`` in
include/uapi/linux/bpf.h. Every failure becomes a :class:`DatapathError` naming the
command and the map or path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass

from egressgw.errors import DatapathError

# __NR_bpf
_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# enum bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27

# enum bpf_map_type
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_RINGBUF = 27

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_F_NO_PREALLOC = 1
BPF_F_NO_COMMON_LRU = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapCreate(ctypes.Structure):
    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    )


class _MapElem(ctypes.Structure):
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    )


class _ObjPath(ctypes.Structure):
    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    )


class _Batch(ctypes.Structure):
    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _InfoByFd(ctypes.Structure):
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    )


class _TestRun(ctypes.Structure):
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        # The rest of union bpf_attr's test-run struct.
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _ProgLoad(ctypes.Structure):
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise DatapathError(f"bpf(2): unsupported architecture {platform.machine()}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def _open_pinned(path: str) -> int:
    """A file descriptor for the map or program pinned at ``path`` (BPF_OBJ_GET)."""
    buf = ctypes.create_string_buffer(os.fsencode(path))
    try:
        return _bpf(OBJ_GET, _ObjPath(_addr(buf), 0, 0))
    except OSError as exc:
        raise DatapathError(f"{path}: {exc.strerror}") from None


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU (not per online CPU)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    total = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        total += (int(high) if high else int(low)) - int(low) + 1
    return total


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


class BpfMap:
    """An open BPF map (a file descriptor), closed with :meth:`close`."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what
        self.info = self._info()

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, map_type: int, key_size: int, value_size: int, *,
               max_entries: int, flags: int = 0) -> BpfMap:
        attr = _MapCreate(map_type, key_size, value_size, max_entries, flags, 0, 0,
                          name.encode()[:15])
        try:
            fd = _bpf(MAP_CREATE, attr)
        except OSError as exc:
            hint = " (needs root)" if exc.errno == errno.EPERM else ""
            raise DatapathError(f"bpf map create {name}: {exc.strerror}{hint}") from None
        return cls(fd, name)

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        return cls(_open_pinned(path), path)

    def pin(self, path: str) -> None:
        buf = ctypes.create_string_buffer(os.fsencode(path))
        try:
            _bpf(OBJ_PIN, _ObjPath(_addr(buf), self.fd, 0))
        except OSError as exc:
            raise DatapathError(f"pin {self.what} at {path}: {exc.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _info(self) -> MapInfo:
        info = _MapInfo()
        try:
            _bpf(OBJ_GET_INFO_BY_FD, _InfoByFd(self.fd, ctypes.sizeof(info),
                                                ctypes.addressof(info)))
        except OSError as exc:
            raise DatapathError(f"{self.what}: map info: {exc.strerror}") from None
        return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                       info.map_flags, info.name.decode(errors="replace"))

    # -- elements --------------------------------------------------------------------

    @property
    def value_bytes(self) -> int:
        """Bytes one lookup returns: per-CPU maps give one 8-byte-aligned slot per CPU."""
        size = self.info.value_size
        if self.info.type == MAP_TYPE_PERCPU_ARRAY:
            return ((size + 7) // 8 * 8) * possible_cpus()
        return size

    def lookup(self, key: bytes) -> bytes | None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(self.value_bytes)
        try:
            _bpf(MAP_LOOKUP_ELEM, _MapElem(self.fd, 0, _addr(k), _addr(v), 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise DatapathError(f"{self.what}: lookup: {exc.strerror}") from None
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        err = self.update_errno(key, value, flags)
        if err:
            raise DatapathError(f"{self.what}: update: {os.strerror(-err)}")

    def update_errno(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        """The update, answered as the kernel answers it: 0, or the negative errno
        (``-EEXIST`` for a ``BPF_NOEXIST`` insert of an existing key, ``-ENOMEM``). The
        same kernel function as a BPF program's update (``htab_lru_map_update_elem``),
        run on the calling CPU; the LRU replay compares these answers with the model's.
        """
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        try:
            _bpf(MAP_UPDATE_ELEM, _MapElem(self.fd, 0, _addr(k), _addr(v), flags))
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        return 0

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False when it was not there."""
        k = ctypes.create_string_buffer(key, len(key))
        try:
            _bpf(MAP_DELETE_ELEM, _MapElem(self.fd, 0, _addr(k), 0, 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise DatapathError(f"{self.what}: delete: {exc.strerror}") from None
        return True

    def all_keys(self) -> list[bytes]:
        """Every key, walked with BPF_MAP_GET_NEXT_KEY (for small maps)."""
        size = self.info.key_size
        out: list[bytes] = []
        nxt = ctypes.create_string_buffer(size)
        cur: ctypes.Array[ctypes.c_char] | None = None
        while True:
            try:
                _bpf(MAP_GET_NEXT_KEY, _MapElem(self.fd, 0, _addr(cur), _addr(nxt), 0))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return out
                raise DatapathError(f"{self.what}: next key: {exc.strerror}") from None
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, size)

    def lookup_batch(self, keys: ctypes.Array[ctypes.c_char],
                     values: ctypes.Array[ctypes.c_char], count: int,
                     token_in: ctypes.Array[ctypes.c_char] | None,
                     token_out: ctypes.Array[ctypes.c_char]) -> tuple[int, bool]:
        """One BPF_MAP_LOOKUP_BATCH call: (entries copied, whether the walk is done).

        ENOSPC (a hash bucket holds more than ``count`` entries) is raised as an OSError
        so the caller can retry with a bigger batch.
        """
        attr = _Batch(_addr(token_in), _addr(token_out), _addr(keys), _addr(values),
                      count, self.fd, 0, 0)
        try:
            _bpf(MAP_LOOKUP_BATCH, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return int(attr.count), True
            if exc.errno == errno.ENOSPC:
                raise
            raise DatapathError(f"{self.what}: lookup batch: {exc.strerror}") from None
        return int(attr.count), False

    def update_batch(self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY
                     ) -> int:
        k = ctypes.create_string_buffer(keys, len(keys))
        v = ctypes.create_string_buffer(values, len(values))
        attr = _Batch(0, 0, _addr(k), _addr(v), count, self.fd, flags, 0)
        try:
            _bpf(MAP_UPDATE_BATCH, attr)
        except OSError as exc:
            raise DatapathError(f"{self.what}: update batch: {exc.strerror}") from None
        return int(attr.count)

    def delete_batch(self, keys: bytes, count: int) -> int:
        k = ctypes.create_string_buffer(keys, len(keys))
        attr = _Batch(0, 0, _addr(k), 0, count, self.fd, 0, 0)
        try:
            _bpf(MAP_DELETE_BATCH, attr)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise DatapathError(f"{self.what}: delete batch: {exc.strerror}") from None
        return int(attr.count)


class BpfProgram:
    """A loaded BPF program (a file descriptor), closed with :meth:`close`: one pinned by
    the loader (the tc programs), or one loaded here from instructions (progrun.py)."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what

    @classmethod
    def open_pinned(cls, path: str) -> BpfProgram:
        return cls(_open_pinned(path), path)

    @classmethod
    def load(cls, prog_type: int, insns: Sequence[bytes], name: str = "") -> BpfProgram:
        """BPF_PROG_LOAD of ``insns`` (``struct bpf_insn`` each); a refusal names the
        verifier's last lines."""
        code = ctypes.create_string_buffer(b"".join(insns))
        license = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(65536)
        attr = _ProgLoad(prog_type, len(insns), _addr(code), _addr(license), 1, len(log),
                         _addr(log), 0, 0, name.encode()[:15], 0, 0)
        try:
            fd = _bpf(PROG_LOAD, attr)
        except OSError as exc:
            lines = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise DatapathError(f"bpf prog load {name}: {exc.strerror}: "
                                + " | ".join(lines)) from None
        return cls(fd, f"bpf program {name}")

    def run(self, packet: bytes) -> tuple[int, bytes]:
        """BPF_PROG_TEST_RUN once on the calling CPU: the program's verdict and the packet
        as it left the program."""
        data_in = ctypes.create_string_buffer(packet, len(packet))
        data_out = ctypes.create_string_buffer(len(packet) + 256)
        attr = _TestRun(self.fd, 0, len(packet), len(data_out), _addr(data_in),
                        _addr(data_out), 1, 0)
        try:
            _bpf(PROG_TEST_RUN, attr)
        except OSError as exc:
            raise DatapathError(f"{self.what}: test run: {exc.strerror}") from None
        return int(attr.retval), data_out.raw[: attr.data_size_out]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
