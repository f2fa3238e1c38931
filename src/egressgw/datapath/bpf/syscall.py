"""bpf(2) through ctypes: create, read and change maps, load and test-run programs.

Only what the project uses, with the layouts of ``union bpf_attr`` from
``include/uapi/linux/bpf.h``. Every call raises :class:`BpfError` (an ``OSError`` with the
command's name) on failure; map operations that fail for an expected reason (a missing key,
an existing key) return that errno instead, so callers can replay them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# Commands
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10

# Map types and flags
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_LRU_HASH = 9
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# Program types
BPF_PROG_TYPE_XDP = 6

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 144

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed."""


def _nr() -> int:
    machine = platform.machine()
    if machine not in _SYSCALL_NR:
        raise BpfError(errno.ENOSYS, f"bpf(2): no syscall number known for {machine}")
    return _SYSCALL_NR[machine]


def bpf(cmd: int, attr: bytes) -> int:
    """The raw call: ``attr`` is the packed ``union bpf_attr``; returns the result or -errno."""
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    result = _libc.syscall(_nr(), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    if result < 0:
        return -ctypes.get_errno()
    return int(result)


def _checked(name: str, result: int) -> int:
    if result < 0:
        raise BpfError(-result, f"bpf({name}): {os.strerror(-result)}")
    return result


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def possible_cpus() -> int:
    """num_possible_cpus(): the count in /sys/devices/system/cpu/possible ("0-7,9")."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


@dataclass
class BpfMap:
    """A map file descriptor with fixed key and value sizes; close() when done."""

    fd: int
    key_size: int
    value_size: int

    @classmethod
    def create(
        cls, map_type: int, key_size: int, value_size: int, max_entries: int, *,
        flags: int = 0, name: str = "",
    ) -> BpfMap:
        attr = struct.pack("<IIIIIII16s", map_type, key_size, value_size, max_entries, flags,
                           0, 0, name.encode()[:15])
        fd = _checked("BPF_MAP_CREATE", bpf(BPF_MAP_CREATE, attr))
        return cls(fd, key_size, value_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None,
              flags: int = 0) -> int:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vaddr = _addr(value) if value is not None else 0
        attr = struct.pack("<IIQQQ", self.fd, 0, _addr(kbuf), vaddr, flags)
        return bpf(cmd, attr)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        """0, or -EEXIST / -ENOENT / -ENOMEM / -E2BIG as the kernel answers."""
        vbuf = ctypes.create_string_buffer(value, self.value_size)
        result = self._elem(BPF_MAP_UPDATE_ELEM, key, vbuf, flags)
        if result < 0 and -result not in (errno.EEXIST, errno.ENOENT, errno.ENOMEM, errno.E2BIG):
            _checked("BPF_MAP_UPDATE_ELEM", result)
        return result

    def lookup(self, key: bytes) -> bytes | None:
        """A lookup from user space (for an LRU map it leaves the reference bit alone)."""
        vbuf = ctypes.create_string_buffer(self.value_size)
        result = self._elem(BPF_MAP_LOOKUP_ELEM, key, vbuf)
        if result == -errno.ENOENT:
            return None
        _checked("BPF_MAP_LOOKUP_ELEM", result)
        return vbuf.raw

    def delete(self, key: bytes) -> bool:
        result = self._elem(BPF_MAP_DELETE_ELEM, key, None)
        if result == -errno.ENOENT:
            return False
        _checked("BPF_MAP_DELETE_ELEM", result)
        return True

    def dump_keys(self) -> Iterator[bytes]:
        """Every key, by BPF_MAP_GET_NEXT_KEY."""
        key: bytes | None = None
        nbuf = ctypes.create_string_buffer(self.key_size)
        while True:
            if key is None:
                attr = struct.pack("<IIQQ", self.fd, 0, 0, _addr(nbuf))
            else:
                kbuf = ctypes.create_string_buffer(key, self.key_size)
                attr = struct.pack("<IIQQ", self.fd, 0, _addr(kbuf), _addr(nbuf))
            result = bpf(BPF_MAP_GET_NEXT_KEY, attr)
            if result == -errno.ENOENT:
                return
            _checked("BPF_MAP_GET_NEXT_KEY", result)
            key = nbuf.raw
            yield key


# -- programs -----------------------------------------------------------------------------

def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


@dataclass
class BpfProgram:
    fd: int

    @classmethod
    def load(cls, prog_type: int, insns: Sequence[bytes], license: str = "GPL") -> BpfProgram:
        code = ctypes.create_string_buffer(b"".join(insns))
        lic = ctypes.create_string_buffer(license.encode())
        log = ctypes.create_string_buffer(65536)
        attr = struct.pack("<IIQQIIQ", prog_type, len(insns), _addr(code), _addr(lic),
                           1, len(log), _addr(log))
        result = bpf(BPF_PROG_LOAD, attr)
        if result < 0:
            detail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise BpfError(-result, f"bpf(BPF_PROG_LOAD): {os.strerror(-result)}: "
                                    + " | ".join(detail))
        return cls(result)

    def test_run(self, data: bytes) -> int:
        """BPF_PROG_TEST_RUN once on ``data``, on the calling CPU; the program's return."""
        dbuf = ctypes.create_string_buffer(data, len(data))
        attr = struct.pack("<IIIIQQII", self.fd, 0, len(data), 0, _addr(dbuf), 0, 1, 0)
        buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
        result = _libc.syscall(_nr(), ctypes.c_int(BPF_PROG_TEST_RUN), buf,
                               ctypes.c_uint(_ATTR_SIZE))
        if result < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"bpf(BPF_PROG_TEST_RUN): {os.strerror(err)}")
        retval: int = struct.unpack_from("<I", buf.raw, 4)[0]
        return retval

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def xdp_lookup_program(bpf_map: BpfMap) -> BpfProgram:
    """An XDP program that looks up the map key held in the packet's first bytes.

    A lookup from a BPF program (``htab_lru_map_lookup_elem``) is what sets an LRU
    element's reference bit; user-space lookups do not. Returns XDP_PASS (2) when the
    key was found, XDP_DROP (1) when not. Keys of 8 bytes.
    """
    if bpf_map.key_size != 8:
        raise ValueError("xdp_lookup_program handles 8-byte keys")
    mov64_reg, mov64_imm, add64_imm = 0xBF, 0xB7, 0x07
    ldx_w, ldx_dw, stx_dw = 0x61, 0x79, 0x7B
    jgt_reg, jeq_imm, ld_imm64, call, exit_ = 0x2D, 0x15, 0x18, 0x85, 0x95
    pseudo_map_fd, map_lookup_elem = 1, 1
    program = [
        insn(mov64_reg, 6, 1),  # r6 = ctx
        insn(ldx_w, 2, 6, 0),  # r2 = ctx->data
        insn(ldx_w, 3, 6, 4),  # r3 = ctx->data_end
        insn(mov64_reg, 4, 2),
        insn(add64_imm, 4, imm=8),
        insn(jgt_reg, 4, 3, off=10),  # data + 8 > data_end: drop
        insn(ldx_dw, 5, 2, 0),  # r5 = the key
        insn(stx_dw, 10, 5, -8),  # on the stack
        insn(ld_imm64, 1, pseudo_map_fd, imm=bpf_map.fd),
        insn(0),
        insn(mov64_reg, 2, 10),
        insn(add64_imm, 2, imm=-8),
        insn(call, imm=map_lookup_elem),
        insn(jeq_imm, 0, off=2, imm=0),  # not found
        insn(mov64_imm, 0, imm=2),  # XDP_PASS
        insn(exit_),
        insn(mov64_imm, 0, imm=1),  # XDP_DROP
        insn(exit_),
    ]
    return BpfProgram.load(BPF_PROG_TYPE_XDP, program)
